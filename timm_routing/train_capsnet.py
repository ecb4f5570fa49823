""" Training entry for the CapsNet experiments: expanded MNIST and MultiMNIST, generated from the MNIST `.npz`

    python -m timm_routing.train_capsnet --npz ../shared/data/mnist.npz --dataset mnist_shift \
        --model capsnet_resnet20 --epochs 10 --output runs/capsnet_resnet20

timm's train.py serves single-label ImageFolders; this entry exists for what it cannot do here: MultiMNIST's two
labels, a fresh random placement of every training digit each epoch (Sabour's expanded MNIST), and Sabour's objective
(margin loss + reconstruction masked by the true label: `CapsuleLoss` on `forward_train`). Models without capsules
(`resnet20`, the baseline of Table 4) are trained with cross-entropy on the same data, optimiser and schedule.

The validation split (`--val-size` digits held out of the MNIST training set, stratified and seeded as everywhere in
the package) scores every epoch; the test splits are for `python -m timm_routing.evaluate` on the final weights.
Everything else comes from timm: `create_model`, `create_optimizer_v2`, `create_scheduler_v2`, `update_summary`.
Outputs in `--output`: `summary.csv` (train.py's columns), `args.yaml`, `last.pth.tar` (resumable, written every
epoch), `model_best.safetensors` and `model_last.safetensors`.
"""
import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

import timm
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import update_summary

from .data import ArrayDataset, ExpandedMnist, MultiMnist, load_npz, make_variant, stratified_holdout
from .loss import CapsuleLoss

__all__ = ['main', 'train', 'evaluate_accuracy']

_logger = logging.getLogger('timm_routing.train_capsnet')


def _is_capsule_model(model: torch.nn.Module) -> bool:
    return hasattr(model, 'forward_train')


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, dataset: ArrayDataset, batch_size: int = 256) -> dict:
    """Single-label top-1/top-5, or for `(N, 2)` labels Sabour's MultiMNIST accuracy (both of the top-2 are the two
    labels), in %; `loss` is the cross-entropy of the outputs (single label) for train.py's summary columns."""
    model.eval()
    n = len(dataset)
    correct1 = correct5 = both = 0
    loss = 0.
    for start in range(0, n, batch_size):
        x = dataset.images[start:start + batch_size][:, None].float().div_(255.)
        y = dataset.labels[start:start + batch_size]
        out = model(x).float()
        if y.dim() == 2:
            top2 = out.topk(2, dim=1).indices.sort(1).values
            both += (top2 == y.sort(1).values).all(1).sum().item()
            continue
        loss += F.cross_entropy(out, y, reduction='sum').item()
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
    if dataset.labels.dim() == 2:
        return dict(top1=100. * both / n, top5=float('nan'), loss=float('nan'), n=n)
    return dict(top1=100. * correct1 / n, top5=100. * correct5 / n, loss=loss / n, n=n)


def _build_data(args):
    data = load_npz(args.npz)
    val_idx = stratified_holdout(data['y_train'], args.val_size, args.seed)
    train_idx = np.setdiff1d(np.arange(len(data['y_train'])), val_idx)
    if args.limit:
        train_idx, val_idx = train_idx[:args.limit], val_idx[:args.limit]
    x_tr, y_tr = data['x_train'][train_idx], data['y_train'][train_idx]
    x_val, y_val = data['x_train'][val_idx], data['y_train'][val_idx]
    if args.dataset == 'mnist_shift':
        train_set = ExpandedMnist(x_tr, y_tr, args.img_size or 40, seed=args.seed)
        val_set = ArrayDataset(*make_variant(x_val, y_val, 'mnist_shift', 'validation', args.seed, args.img_size))
    else:
        train_set = MultiMnist(x_tr, y_tr, args.train_pairs or len(y_tr), args.img_size or 36, seed=args.seed)
        val_set = ArrayDataset(*make_variant(
            x_val, y_val, 'multimnist', 'validation', args.seed, args.img_size, args.val_pairs or len(y_val)))
    return train_set, val_set


def train(args) -> dict:
    """Runs the whole schedule; returns the last epoch's metrics."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    train_set, val_set = _build_data(args)
    img_size = train_set.images.shape[-1]
    model_kwargs = dict(args.model_kwargs or {})
    model = timm.create_model(args.model, num_classes=10, in_chans=1, **model_kwargs)
    if _is_capsule_model(model) and tuple(model.img_size) != (img_size, img_size):
        raise ValueError(f'{args.model} is built for {model.img_size} inputs but the data are {img_size}x{img_size}; '
                         f'pass --model-kwargs img_size={img_size}.')
    multi = train_set.labels.dim() == 2
    if multi and not _is_capsule_model(model):
        raise ValueError(f'{args.model} has no capsules; MultiMNIST training here is for CapsNet models.')
    criterion = CapsuleLoss(args.recon_weight) if _is_capsule_model(model) else None
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = -(-len(train_set) // args.batch_size)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs, min_lr=args.min_lr,
        step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    start_epoch, best = 0, None
    if args.resume and (out / 'last.pth.tar').exists():
        state = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=False)
        model.load_state_dict(state['state_dict'])
        optimizer.load_state_dict(state['optimizer'])
        start_epoch, best = state['epoch'] + 1, state.get('best')
        torch.set_rng_state(state['rng'])
    (out / 'args.yaml').write_text(yaml.safe_dump(vars(args), sort_keys=False))
    from safetensors.torch import save_file
    metrics = {}
    for epoch in range(start_epoch, num_epochs):
        if hasattr(train_set, 'set_epoch'):
            train_set.set_epoch(epoch)
        model.train()
        order = torch.randperm(len(train_set))
        t0, total, seen = time.time(), 0., 0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            x = train_set.images[idx][:, None].float().div_(255.)
            y = train_set.labels[idx]
            if criterion is not None:
                loss = criterion(model.forward_train(x, y), y, x)['loss']
            else:
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step_update(num_updates=epoch * steps_per_epoch + step + 1)
            total += loss.item() * len(idx)
            seen += len(idx)
            if args.log_interval and step % args.log_interval == 0:
                _logger.info(f'epoch {epoch} step {step}/{steps_per_epoch} loss {total / seen:.4f} '
                             f'{seen / (time.time() - t0):.0f} img/s')
        metrics = evaluate_accuracy(model, val_set)
        lr = optimizer.param_groups[0]['lr']
        update_summary(
            epoch, dict(loss=total / seen), dict(loss=metrics['loss'], top1=metrics['top1'], top5=metrics['top5']),
            str(out / 'summary.csv'), lr=lr, write_header=epoch == 0)
        state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
        if best is None or metrics['top1'] >= best:
            best = metrics['top1']
            save_file(state_dict, str(out / 'model_best.safetensors'))
        save_file(state_dict, str(out / 'model_last.safetensors'))
        torch.save(dict(state_dict=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch, best=best,
                        rng=torch.get_rng_state(), args=vars(args)), out / 'last.pth.tar')
        _logger.info(f'epoch {epoch}: train loss {total / seen:.4f}, validation top-1 {metrics["top1"]:.2f} '
                     f'({time.time() - t0:.0f} s)')
    return metrics


def _kv(text: str):
    key, _, value = text.partition('=')
    if not key or not _:
        raise argparse.ArgumentTypeError(f'--model-kwargs takes key=value, got {text!r}')
    return key, yaml.safe_load(value)


def main(argv=None) -> int:
    import timm_routing  # noqa: F401  registers the models
    parser = argparse.ArgumentParser(prog='python -m timm_routing.train_capsnet', description=__doc__.split('\n\n')[0])
    parser.add_argument('--npz', required=True, help='MNIST .npz (x_train, y_train, x_test, y_test)')
    parser.add_argument('--dataset', default='mnist_shift', choices=('mnist_shift', 'multimnist'))
    parser.add_argument('--model', default='capsnet_resnet20')
    parser.add_argument('--model-kwargs', nargs='*', type=_kv, default=None, metavar='KEY=VALUE')
    parser.add_argument('--img-size', type=int, default=None, help='canvas size (40 for mnist_shift, 36 multimnist)')
    parser.add_argument('--train-pairs', type=int, default=None, help='MultiMNIST training pairs per epoch, drawn '
                        'afresh every epoch (default: one per training digit)')
    parser.add_argument('--val-pairs', type=int, default=None)
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--opt', default='adam')
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--weight-decay', type=float, default=0.)
    parser.add_argument('--sched', default='cosine')
    parser.add_argument('--warmup-epochs', type=int, default=0)
    parser.add_argument('--min-lr', type=float, default=1e-5)
    parser.add_argument('--recon-weight', type=float, default=0.0005)
    parser.add_argument('--val-size', type=int, default=5000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--limit', type=int, default=None, help='first N training and validation digits (tests)')
    parser.add_argument('--log-interval', type=int, default=50)
    parser.add_argument('--resume', action='store_true', help='continue from OUTPUT/last.pth.tar')
    parser.add_argument('--output', required=True)
    args = parser.parse_args(argv)
    args.model_kwargs = dict(args.model_kwargs) if args.model_kwargs else None
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    metrics = train(args)
    print(f'validation top-1 {metrics.get("top1", float("nan")):.2f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
