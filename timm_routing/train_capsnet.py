""" Training entry on in-memory arrays: the CapsNet experiments (expanded MNIST, MultiMNIST) and GPU-resident runs

    python -m timm_routing.train_capsnet --npz ../shared/data/mnist.npz --dataset mnist_shift \
        --model capsnet_resnet20 --epochs 10 --output runs/capsnet_resnet20
    python -m timm_routing.train_capsnet --npz ../shared/data/cifar10_jpeg_q75_approx.npz --dataset plain \
        --model resnet20_routing --opt momentum --lr 0.1 --weight-decay 1e-4 --sched multistep \
        --decay-milestones 91 136 --epochs 182 --device cuda --output runs/resnet20_routing

timm's train.py serves single-label ImageFolders; this entry exists for what it cannot do here: MultiMNIST's two
labels, a fresh random placement of every training digit each epoch (Sabour's expanded MNIST), and Sabour's objective
(margin loss + reconstruction masked by the true label: `CapsuleLoss` on `forward_train`). Models without capsules
(`resnet20`, the baseline of Table 4) are trained with cross-entropy on the same data, optimiser and schedule.

`--dataset plain` trains on the `.npz` images as they are (any size and channel count) with He et al.'s augmentation,
done on the training device: `--pad` pixels of zero padding, a random crop back to the image size and a horizontal flip
with probability `--hflip`. The whole dataset sits on the device, so a small network on a GPU is not held back by a
per-image loader as it is under train.py. `-c FILE` reads option defaults from a YAML keyed as `args.yaml` is, as
train.py's `-c` does (the command line overrides it; an unknown key or a value of the wrong type raises): the
`scripts/recipes/<tag>.yaml` of each tag trained here holds its run's options. Inputs are normalised with the model's
pretrained_cfg mean and std. `--time-budget` fits the schedule to the time available: after the second epoch, if the
remaining epochs at that epoch's speed would overrun the budget, the schedule is shortened (`--decay-milestones` scaled
in proportion) and `args.yaml` records `epochs_fitted`; a run past 110% of the budget stops after its epoch and records
`stopped_after_epochs`.

The validation split (`--val-size` images held out of the training set, stratified and seeded as everywhere in the
package) scores every epoch; the test splits are for `python -m timm_routing.evaluate` on the final weights. The split
is drawn with `--split-seed`, by default `--seed`, so each seed holds out its own images unless a fixed `--split-seed`
keeps one validation set across seeds (score it with `evaluate --seed SPLIT_SEED`).
`--amp` (with `--amp-dtype`), `--channels-last` and `--torchcompile` (with `--torchcompile-mode`) are train.py's
options of the same names, for the training steps; validation runs in float32 on the model as built. `--pretrained`
and `--initial-checkpoint` are train.py's too: a run starts from a tag's weights (`--model <name>.<tag> --pretrained`,
with timm's stem and classifier adaptation where the data differ) or from a weight file of the same model (strict; a
safetensors file, or a train.py or train_capsnet checkpoint), e.g. to continue a finished schedule with a new one.
Everything else comes from timm: `create_model`, `create_optimizer_v2`, `create_scheduler_v2`, `update_summary`.
Outputs in `--output`: `summary.csv` (train.py's columns), `args.yaml`, `last.pth.tar` (resumable, written every
epoch), `model_best.safetensors` and `model_last.safetensors`. Each weight file is written under a temporary name and
renamed, so a run stopped at any moment resumes (`--resume`) from its last whole epoch, and the summary rows of the
epochs it trains again are replaced, not repeated. The checkpoint keeps the random state that draws the batch order and
the crops (the CUDA generator's too on a GPU), so a resumed run on the same device takes the batches of an
uninterrupted one; it resumes on another device too (a GPU run finished on a CPU), with that device's draws from then.
`args.yaml` holds the options of the last start and, under `resumes`, each resume's first epoch and the options it
changed (`[before, after]`).
"""
import argparse
import contextlib
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Tuple

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
from .models._pretrained import load_weight_file

__all__ = ['main', 'parse_args', 'load_config', 'train', 'evaluate_accuracy', 'pad_crop_flip']

_logger = logging.getLogger('timm_routing.train_capsnet')


def _is_capsule_model(model: torch.nn.Module) -> bool:
    return hasattr(model, 'forward_train')


def to_model_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images `(B, H, W)` or `(B, H, W, C)` -> normalised float `(B, C, H, W)` (`mean`, `std`: `(1, C, 1, 1)`)."""
    x = images if images.dim() == 4 else images[..., None]
    return (x.permute(0, 3, 1, 2).float().div_(255.) - mean) / std


def pad_crop_flip(padded: torch.Tensor, index: torch.Tensor, size: int, hflip: float = 0.5) -> torch.Tensor:
    """He et al.'s CIFAR augmentation for a batch, on the device of `padded`.

    Args:
        padded: uint8 images `(N, H + 2p, W + 2p, C)`, zero-padded once for the whole dataset.
        index: the batch's rows of `padded`.
        size: crop size (the original H = W).
        hflip: probability of a horizontal flip, per image.

    Returns:
        `(B, size, size, C)` crops at uniform random offsets in `[0, 2p]`, mirrored where the coin says so (one gather:
        the flip reverses the column indices).
    """
    device, b = padded.device, len(index)
    offset_y = torch.randint(0, padded.shape[1] - size + 1, (b,), device=device)
    offset_x = torch.randint(0, padded.shape[2] - size + 1, (b,), device=device)
    steps = torch.arange(size, device=device)
    rows = (offset_y[:, None] + steps)[:, :, None]
    cols = (offset_x[:, None] + steps)[:, None, :]
    flip = (torch.rand(b, device=device) < hflip)[:, None, None]
    cols = torch.where(flip, cols.flip(-1), cols)
    return padded[index.to(device)[:, None, None], rows, cols]


class _Split:
    """uint8 images and int64 labels (numpy arrays in) as tensors on the training device."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)

    def __len__(self) -> int:
        return len(self.images)


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, dataset, batch_size: int = 256, mean=0., std=1.) -> dict:
    """Single-label top-1/top-5, or for `(N, 2)` labels Sabour's MultiMNIST accuracy (both of the top-2 are the two
    labels), in %; `loss` is the cross-entropy of the outputs (single label) for train.py's summary columns.

    `dataset` has uint8 `images` `(N, H, W[, C])` and `labels`; they are normalised with `mean`, `std` (scalars or
    `(1, C, 1, 1)` tensors) and fed on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    n = len(dataset)
    correct1 = correct5 = both = 0
    loss = torch.zeros((), device=device, dtype=torch.float64)
    for start in range(0, n, batch_size):
        x = to_model_input(dataset.images[start:start + batch_size].to(device), mean, std)
        y = dataset.labels[start:start + batch_size].to(device)
        out = model(x).float()
        if y.dim() == 2:
            top2 = out.topk(2, dim=1).indices.sort(1).values
            both += (top2 == y.sort(1).values).all(1).sum()
            continue
        loss += F.cross_entropy(out, y, reduction='sum')
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum()
        correct5 += (top == y[:, None]).any(1).sum()
    if dataset.labels.dim() == 2:
        return dict(top1=100. * float(both) / n, top5=float('nan'), loss=float('nan'), n=n)
    return dict(top1=100. * float(correct1) / n, top5=100. * float(correct5) / n, loss=loss.item() / n, n=n)


DATASETS = ('mnist_shift', 'multimnist', 'plain')


def model_classes_and_channels(dataset: str, data=None) -> Tuple[int, int]:
    """The classes and input channels of the model a run on `dataset` builds: 10 and 1 for the MNIST-derived datasets;
    for `plain`, counted in `data` (`load_npz`'s dict), over all its training images, so a `--limit` run builds the
    head of the full one. `scripts/export_weights.py` rebuilds a run's model with it."""
    if dataset not in DATASETS:
        raise ValueError(f'unknown dataset {dataset!r}; one of {DATASETS}')
    if dataset != 'plain':
        return 10, 1
    return int(data['y_train'].max()) + 1, int(data['x_train'].shape[-1])


def _build_data(args, data: dict):
    val_idx = stratified_holdout(data['y_train'], args.val_size, args.split_seed)
    train_idx = np.setdiff1d(np.arange(len(data['y_train'])), val_idx)
    if args.limit:
        train_idx, val_idx = train_idx[:args.limit], val_idx[:args.limit]
    x_tr, y_tr = data['x_train'][train_idx], data['y_train'][train_idx]
    x_val, y_val = data['x_train'][val_idx], data['y_train'][val_idx]
    if args.dataset == 'plain':
        if args.img_size not in (None, x_tr.shape[1]):
            raise ValueError(f'--img-size {args.img_size} with --dataset plain: the images are {x_tr.shape[1]} pixels; '
                             'plain training uses them as they are.')
        padded = np.pad(x_tr, ((0, 0), (args.pad, args.pad), (args.pad, args.pad), (0, 0)))
        return _Split(padded, y_tr, args.device), _Split(x_val, y_val, args.device)
    if args.dataset == 'mnist_shift':
        train_set = ExpandedMnist(x_tr, y_tr, args.img_size or 40, seed=args.seed)
        val_set = ArrayDataset(*make_variant(x_val, y_val, 'mnist_shift', 'validation', args.split_seed, args.img_size))
    else:
        train_set = MultiMnist(x_tr, y_tr, args.train_pairs or len(y_tr), args.img_size or 36, seed=args.seed)
        val_set = ArrayDataset(*make_variant(
            x_val, y_val, 'multimnist', 'validation', args.split_seed, args.img_size, args.val_pairs or len(y_val)))
    return train_set, val_set


def _write_args(out: Path, args) -> None:
    """`args.yaml`, rewritten whenever the run records something new (a fitted schedule, an early stop)."""
    (out / 'args.yaml').write_text(yaml.safe_dump(vars(args), sort_keys=False))


def _resume_records(before: dict, args, epoch: int) -> list:
    """The run's resumes for `args.yaml`, which otherwise holds only the options of the last: each names the first epoch
    it trained and the options that differ from those before it, `[before, after]` (another device or precision, a
    longer schedule), after the records of earlier resumes."""
    now, skip = vars(args), _RUN_RECORDS + ('resume',)
    changed = {k: [before[k], v] for k, v in now.items() if k in before and k not in skip and before[k] != v}
    if changed:
        _logger.warning(f'--resume at epoch {epoch} with changed options: {changed}')
    return list(before.get('resumes') or []) + [dict(epoch=epoch, changed=changed)]


def _create_scheduler(optimizer, args, num_epochs: int, milestones, steps_per_epoch: int):
    return create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=num_epochs, warmup_epochs=args.warmup_epochs, min_lr=args.min_lr,
        decay_milestones=list(milestones), decay_rate=args.decay_rate, step_on_epochs=False,
        updates_per_epoch=steps_per_epoch)


def _input_normalisation(model: torch.nn.Module, in_chans: int, plain: bool, device):
    """`(1, C, 1, 1)` mean and std: raw pixels in [0, 1] for the MNIST variants (as Sabour feeds CapsNet, and as the
    variant cfgs say), the model's pretrained_cfg values for plain data (averaged over channels when the cfg has
    another channel count than the data, e.g. the CIFAR cfg of `resnet20` on grey images)."""
    if not plain:
        return torch.zeros(1, 1, 1, 1, device=device), torch.ones(1, 1, 1, 1, device=device)
    data_config = timm.data.resolve_data_config({}, model=model)
    mean, std = torch.tensor(data_config['mean']), torch.tensor(data_config['std'])
    if len(mean) != in_chans:
        _logger.info(f'pretrained_cfg mean/std have {len(mean)} channels, the data {in_chans}: using their averages')
        mean, std = mean.mean().expand(in_chans), std.mean().expand(in_chans)
    return mean.reshape(1, -1, 1, 1).to(device), std.reshape(1, -1, 1, 1).to(device)


def _save_atomically(save, path: Path) -> None:
    """Writes `path` through `save(temporary path)` and a rename, so that a run stopped while saving keeps the
    previous file whole for `--resume`."""
    partial = path.with_name(path.name + '.partial')
    save(partial)
    os.replace(partial, path)


def _drop_summary_rows_from(path: Path, epoch: int) -> None:
    """Removes the rows of `epoch` and later from a summary.csv: a run stopped after writing an epoch's row but before
    its checkpoint trains that epoch again on `--resume`, which would otherwise write the row twice."""
    if not path.exists():
        return
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    kept = [row for row in rows if int(row['epoch']) < epoch]
    if len(kept) < len(rows):
        _logger.info(f'--resume from epoch {epoch}: dropping {len(rows) - len(kept)} later row(s) of {path}')
        with open(path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)


def _holdout_metadata(args) -> dict:
    """safetensors metadata naming the validation hold-out of the run (`evaluate`'s hold-out check reads it)."""
    keys = ('npz', 'dataset', 'val_size', 'seed', 'split_seed')
    return {'train_capsnet': json.dumps({k: getattr(args, k, None) for k in keys}, default=str)}


# options that count something: (option, smallest value, may be None)
_COUNT_OPTIONS = (
    ('epochs', 1, False), ('batch_size', 1, False), ('val_size', 1, False), ('limit', 1, True),
    ('train_pairs', 1, True), ('val_pairs', 1, True), ('img_size', 1, True), ('pad', 0, False),
    ('warmup_epochs', 0, False), ('log_interval', 0, False),
)


def _check_options(args) -> None:
    """Raises a ValueError naming the first option whose value cannot be meant (a count below its minimum, a
    non-positive time budget, a flip probability outside [0, 1], a negative reconstruction weight)."""
    for name, least, optional in _COUNT_OPTIONS:
        value = getattr(args, name, None)
        if value is None and (optional or not hasattr(args, name)):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f'--{name.replace("_", "-")} must be an integer >= {least}, got {value!r}.')
    budget = getattr(args, 'time_budget', None)
    if budget is not None and not budget > 0:
        raise ValueError(f'--time-budget must be a positive number of seconds, got {budget!r}.')
    hflip = getattr(args, 'hflip', 0.)
    if not 0. <= hflip <= 1.:
        raise ValueError(f'--hflip is a probability in [0, 1], got {hflip!r}.')
    recon = getattr(args, 'recon_weight', 0.)
    if not recon >= 0.:
        raise ValueError(f'--recon-weight must be >= 0, got {recon!r}.')


def train(args) -> dict:
    """Runs the whole schedule; returns the last epoch's metrics."""
    t_start = time.time()
    _check_options(args)
    initial, pretrained = getattr(args, 'initial_checkpoint', None), getattr(args, 'pretrained', False)
    if initial and pretrained:
        raise ValueError(f'--pretrained and --initial-checkpoint {initial}: give one source of starting weights.')
    if getattr(args, 'split_seed', None) is None:  # the hold-out follows --seed unless a split seed is given
        args.split_seed = args.seed
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    data = load_npz(args.npz)
    train_set, val_set = _build_data(args, data)
    num_classes, in_chans = model_classes_and_channels(args.dataset, data)
    del data  # the splits hold their own copies
    plain = args.dataset == 'plain'
    img_size = train_set.images.shape[2] - 2 * args.pad if plain else train_set.images.shape[-1]
    model_kwargs = dict(args.model_kwargs or {})
    model = timm.create_model(args.model, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans,
                              **model_kwargs)
    if initial:
        load_weight_file(model, initial, args.model, '--initial-checkpoint')
    model.to(device)
    mean, std = _input_normalisation(model, in_chans, plain, device)
    if _is_capsule_model(model) and tuple(model.img_size) != (img_size, img_size):
        raise ValueError(f'{args.model} is built for {model.img_size} inputs but the data are {img_size}x{img_size}; '
                         f'pass --model-kwargs img_size={img_size}.')
    multi = train_set.labels.dim() == 2
    if multi and not _is_capsule_model(model):
        raise ValueError(f'{args.model} has no capsules; MultiMNIST training here is for CapsNet models.')
    criterion = CapsuleLoss(args.recon_weight) if _is_capsule_model(model) else None
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.channels_last:
        model.to(memory_format=memory_format)
    # what the training steps call: the model (capsule models: forward_train, for the reconstruction), maybe compiled;
    # evaluation and the saved weights use the model itself
    forward = model.forward_train if criterion is not None else model
    if args.torchcompile:
        forward = torch.compile(forward, backend=args.torchcompile, mode=args.torchcompile_mode)
    amp_dtype = getattr(torch, args.amp_dtype)
    scaler = torch.amp.GradScaler(device.type) if args.amp and amp_dtype == torch.float16 else None

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if args.amp else contextlib.nullcontext()

    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum)
    steps_per_epoch = -(-len(train_set) // args.batch_size)
    milestones = args.decay_milestones
    scheduler, num_epochs = _create_scheduler(optimizer, args, args.epochs, milestones, steps_per_epoch)
    start_epoch, best = 0, None
    if args.resume and (out / 'last.pth.tar').exists():
        # on the CPU: the RNG states must stay CPU byte tensors; the model and optimizer copy the rest to the device
        state = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=False)
        model.load_state_dict(state['state_dict'])
        optimizer.load_state_dict(state['optimizer'])
        if scaler is not None and state.get('scaler'):
            scaler.load_state_dict(state['scaler'])
        start_epoch, best = state['epoch'] + 1, state.get('best')
        args.resumes = _resume_records(state.get('args') or {}, args, start_epoch)
        _drop_summary_rows_from(out / 'summary.csv', start_epoch)
        torch.set_rng_state(state['rng'])
        if device.type == 'cuda' and state.get('cuda_rng') is not None:  # batch order and crops are drawn there
            torch.cuda.set_rng_state(state['cuda_rng'], device)
        if state.get('fitted'):  # a schedule shortened by --time-budget stays shortened
            num_epochs, milestones = state['fitted']
            args.epochs_fitted, args.decay_milestones_fitted = num_epochs, milestones
            scheduler, num_epochs = _create_scheduler(optimizer, args, num_epochs, milestones, steps_per_epoch)
    _write_args(out, args)
    from safetensors.torch import save_file
    metrics = {}
    holdout = _holdout_metadata(args)  # lets `evaluate` refuse another split when a weight file leaves its run folder
    epoch = start_epoch
    while epoch < num_epochs:
        if hasattr(train_set, 'set_epoch'):
            train_set.set_epoch(epoch)
        images, labels = train_set.images.to(device), train_set.labels.to(device)
        model.train()
        order = torch.randperm(len(train_set), device=device)
        t0, seen = time.time(), 0
        total = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            batch = pad_crop_flip(images, idx, img_size, args.hflip) if plain else images[idx]
            x, y = to_model_input(batch, mean, std).contiguous(memory_format=memory_format), labels[idx]
            with autocast():
                if criterion is not None:
                    loss = criterion(forward(x, y), y, x)['loss']
                else:
                    loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step_update(num_updates=epoch * steps_per_epoch + step + 1)
            total += loss.detach() * len(idx)
            seen += len(idx)
            if args.log_interval and step % args.log_interval == 0:
                _logger.info(f'epoch {epoch} step {step}/{steps_per_epoch} loss {total.item() / seen:.4f} '
                             f'{seen / (time.time() - t0):.0f} img/s')
        metrics = evaluate_accuracy(model, val_set, mean=mean, std=std)
        lr = optimizer.param_groups[0]['lr']
        train_loss = total.item() / seen
        update_summary(
            epoch, dict(loss=train_loss), dict(loss=metrics['loss'], top1=metrics['top1'], top5=metrics['top5']),
            str(out / 'summary.csv'), lr=lr, write_header=epoch == 0)
        state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
        if best is None or metrics['top1'] >= best:
            best = metrics['top1']
            _save_atomically(lambda p: save_file(state_dict, str(p), metadata=holdout), out / 'model_best.safetensors')
        _save_atomically(lambda p: save_file(state_dict, str(p), metadata=holdout), out / 'model_last.safetensors')
        epoch_time = time.time() - t0
        _logger.info(f'epoch {epoch}: train loss {train_loss:.4f}, validation top-1 {metrics["top1"]:.2f} '
                     f'({epoch_time:.1f} s)')
        elapsed = time.time() - t_start
        if args.time_budget and epoch == start_epoch + 1 and epoch + 1 < num_epochs:
            # the second epoch's time: the first also pays for warm-up (cudnn autotuning, allocator, other jobs)
            fits = max(epoch + 1, epoch + 1 + int((args.time_budget - elapsed) / epoch_time))
            if fits < num_epochs:
                milestones = [max(1, round(m * fits / num_epochs)) for m in milestones]
                scheduler, num_epochs = _create_scheduler(optimizer, args, fits, milestones, steps_per_epoch)
                scheduler.step_update(num_updates=(epoch + 1) * steps_per_epoch)
                args.epochs_fitted, args.decay_milestones_fitted = num_epochs, milestones
                _write_args(out, args)
                _logger.info(f'--time-budget {args.time_budget:.0f} s: schedule shortened to {num_epochs} epochs '
                             f'(milestones {milestones}) at {epoch_time:.1f} s per epoch')
        checkpoint = dict(
            state_dict=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch, best=best,
            rng=torch.get_rng_state(), cuda_rng=torch.cuda.get_rng_state(device) if device.type == 'cuda' else None,
            args=vars(args), scaler=scaler.state_dict() if scaler else None,
            fitted=(num_epochs, milestones) if hasattr(args, 'epochs_fitted') else None)
        _save_atomically(lambda p: torch.save(checkpoint, p), out / 'last.pth.tar')
        epoch += 1
        # the stop is a safety net behind the fitted schedule, which needs two epochs to be measured
        if args.time_budget and elapsed > 1.1 * args.time_budget and start_epoch + 2 <= epoch < num_epochs:
            args.stopped_after_epochs = epoch
            _write_args(out, args)
            _logger.warning(f'stopped after {epoch} of {num_epochs} epochs: over 110% of --time-budget')
            break
    return metrics


def _kv(text: str):
    key, _, value = text.partition('=')
    if not key or not _:
        raise argparse.ArgumentTypeError(f'--model-kwargs takes key=value, got {text!r}')
    return key, yaml.safe_load(value)


# what `args.yaml` records about a finished run besides its options: not options themselves
_RUN_RECORDS = ('config', 'epochs_fitted', 'decay_milestones_fitted', 'stopped_after_epochs', 'resumes')


def _check_config_value(path, action: argparse.Action, value) -> None:
    """Raises TypeError/ValueError, naming the file, key and value, where `value` is not what the option takes."""
    where = f'--config {path}: {action.dest}: {value!r}'
    if value is None:
        return
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise TypeError(f'{where} is not true or false')
        return
    if action.dest == 'model_kwargs':
        if not isinstance(value, dict):
            raise TypeError(f'{where} is not a mapping of timm.create_model kwargs')
        return
    if action.nargs in ('*', '+'):
        if not isinstance(value, list):
            raise TypeError(f'{where} is not a list')
        items = value
    else:
        items = [value]
    expected = action.type or str
    for item in items:
        number = isinstance(item, (int, float)) and not isinstance(item, bool)
        if expected is float and not number:
            raise TypeError(f'{where} is not a number')
        if expected is int and not (number and isinstance(item, int)):
            raise TypeError(f'{where} is not an integer')
        if expected is str and not isinstance(item, str):
            raise TypeError(f'{where} is not a string')
        if action.choices is not None and item not in action.choices:
            raise ValueError(f'{where} is not one of {list(action.choices)}')


def load_config(path, parser: argparse.ArgumentParser) -> dict:
    """Option defaults from a YAML file keyed as `args.yaml` is (`batch_size: 128`), as train.py's `-c` reads its own.

    Every key must be an option of `parser` with a value of the option's type: a misspelt or foreign key (a train.py
    recipe's `device_modules`, a finished run's `epochs_fitted`) raises ValueError naming it rather than being dropped.
    """
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f'--config {path}: cannot be read as YAML ({e})') from e
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise TypeError(f'--config {path}: expected a mapping of options, got a {type(config).__name__}')
    actions = {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}
    records = sorted(k for k in config if k in _RUN_RECORDS and config[k] is not None)
    if records:
        raise ValueError(f'--config {path}: {records} record a finished run, they are not options: delete them')
    config = {k: v for k, v in config.items() if k not in _RUN_RECORDS}  # left: records of nothing (`config: null`)
    unknown = sorted(str(k) for k in config if k not in actions)
    if unknown:
        hint = ", a recipe for timm's train.py (python train.py -c FILE)?" if 'device_modules' in unknown else ''
        raise ValueError(f'--config {path}: unknown options {unknown} (options: {sorted(actions)}{hint})')
    for key, value in config.items():
        _check_config_value(path, actions[key], value)
    if config.get('model_kwargs'):  # the command line's --model-kwargs extends the list of (key, value) pairs
        config['model_kwargs'] = list(config['model_kwargs'].items())
    return config


def parse_args(argv=None) -> argparse.Namespace:
    """The command line over the defaults of `--config`, then the checks of options required from either."""
    parser = argparse.ArgumentParser(prog='python -m timm_routing.train_capsnet', description=__doc__.split('\n\n')[0])
    parser.add_argument('-c', '--config', default=None, metavar='FILE',
                        help="YAML of option defaults keyed as args.yaml is (e.g. scripts/recipes/<tag>.yaml); the "
                             'command line overrides it')
    parser.add_argument('--npz', default=None,
                        help='.npz with x_train, y_train, x_test, y_test (MNIST for the CapsNet datasets); required')
    parser.add_argument('--dataset', default='mnist_shift', choices=DATASETS,
                        help="plain: the .npz images as they are, with --pad/--hflip augmentation")
    parser.add_argument('--model', default='capsnet_resnet20')
    parser.add_argument('--pretrained', action='store_true',
                        help="start from the model's pretrained weights (e.g. --model capsnet_resnet20_lam5.<tag>)")
    parser.add_argument('--initial-checkpoint', default=None, metavar='PATH',
                        help='start from these weights: a safetensors file, a train.py or train_capsnet checkpoint')
    parser.add_argument('--model-kwargs', nargs='*', type=_kv, default=None, metavar='KEY=VALUE', action='extend',
                        help='timm.create_model kwargs; repeatable (later keys win), so a wrapper can add its own')
    parser.add_argument('--img-size', type=int, default=None, help='canvas size (40 for mnist_shift, 36 multimnist)')
    parser.add_argument('--train-pairs', type=int, default=None, help='MultiMNIST training pairs per epoch, drawn '
                        'afresh every epoch (default: one per training digit)')
    parser.add_argument('--val-pairs', type=int, default=None)
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--pad', type=int, default=4, help='plain: zero padding before the random crop')
    parser.add_argument('--hflip', type=float, default=0.5, help='plain: horizontal flip probability')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--opt', default='adam', help="timm optimiser name ('momentum': SGD without Nesterov)")
    parser.add_argument('--momentum', type=float, default=0.9)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--weight-decay', type=float, default=0.)
    parser.add_argument('--sched', default='cosine')
    parser.add_argument('--warmup-epochs', type=int, default=0)
    parser.add_argument('--min-lr', type=float, default=1e-5)
    parser.add_argument('--decay-milestones', type=int, nargs='*', default=[90, 180], help='multistep: epochs')
    parser.add_argument('--decay-rate', type=float, default=0.1)
    parser.add_argument('--time-budget', type=float, default=None, metavar='SECONDS',
                        help='shorten the schedule after the second epoch if it would not fit (see the module doc)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--amp', action='store_true', help='mixed precision (torch.autocast) in the training steps')
    parser.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16'),
                        help='autocast dtype of --amp; float16 scales the loss (GradScaler)')
    parser.add_argument('--channels-last', action='store_true', help='model and inputs in channels-last memory format')
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                        help='torch.compile the training forward with BACKEND (inductor when given no value)')
    parser.add_argument('--torchcompile-mode', default=None, help="torch.compile mode, e.g. 'reduce-overhead'")
    parser.add_argument('--recon-weight', type=float, default=0.0005)
    parser.add_argument('--val-size', type=int, default=5000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--split-seed', type=int, default=None,
                        help='seed of the held-out validation split (and of its MNIST variant); default: --seed. '
                             'Evaluate with python -m timm_routing.evaluate --seed SPLIT_SEED')
    parser.add_argument('--limit', type=int, default=None, help='first N training and validation digits (tests)')
    parser.add_argument('--log-interval', type=int, default=50)
    parser.add_argument('--resume', action='store_true', help='continue from OUTPUT/last.pth.tar')
    parser.add_argument('--output', default=None, help='run folder; required')
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**load_config(args.config, parser))
        args = parser.parse_args(argv)
    missing = [f'--{name}' for name in ('npz', 'output') if getattr(args, name) is None]
    if missing:
        parser.error(f'{" and ".join(missing)} required (on the command line or in --config)')
    args.model_kwargs = dict(args.model_kwargs) if args.model_kwargs else None
    return args


def main(argv=None) -> int:
    import timm_routing  # noqa: F401  registers the models
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    metrics = train(args)
    print(f'validation top-1 {metrics.get("top1", float("nan")):.2f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
