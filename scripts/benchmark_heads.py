#!/usr/bin/env python3
""" Speed and memory of pooling heads: average, max, routing (1-3 iterations) and timm's attention pooling

Measures, for resnet20 at 32x32 and resnet50 at 224x224 (or the models given):
* inference throughput (forward under `torch.no_grad`, images/s),
* training-step throughput (forward, cross-entropy, backward, SGD step, images/s),
* memory: on CUDA the peak allocated during a training step; on CPU the bytes autograd saves for backward in a
  training step (counted with `torch.autograd.graph.saved_tensors_hooks`, each storage once), the part of the
  training memory that depends on the head;
* the pooling layers alone, forward+backward on a `(256, 2048, 7, 7)` map (`--layer-shape`).

Heads are swapped into the same backbone (same weights, same inputs) and timed interleaved, each repetition running
every head once, so that drifts of the machine hit all heads alike; the median step time is reported. Ratios against
average pooling come from the same run.

    python scripts/benchmark_heads.py --device cpu --out docs/benchmarks-cpu.json

prints Markdown tables (machine, torch and timm versions included) and writes the raw numbers as JSON.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

import timm
from timm.layers import AttentionPool2d, SelectAdaptivePool2d

import timm_routing  # noqa: F401  registers the models
from timm_routing.layers import RoutingPool2d
from timm_routing.models.backbones import _find_global_pool

HEADS = ('avg', 'max', 'routing-1', 'routing-2', 'routing-3', 'attention')


def make_pool(head: str, num_features: int, feat_size: int, device, lam: float, normalize: bool = False) -> nn.Module:
    """The pooling layer of `head`, producing `(B, num_features)`."""
    if head in ('avg', 'max'):
        return SelectAdaptivePool2d(pool_type=head, flatten=True)
    if head.startswith('routing-'):
        return RoutingPool2d(capsule_dim=16, iters=int(head.split('-')[1]), lam=lam, normalize=normalize, flatten=True)
    if head == 'attention':
        return AttentionPool2d(num_features, feat_size=feat_size, out_features=num_features, device=device)
    raise ValueError(f'Unknown head {head!r}; expected one of {HEADS}.')


def build_models(model_name: str, img_size: int, heads: List[str], device, lam: float,
                 normalize: bool = False) -> Dict[str, nn.Module]:
    torch.manual_seed(0)
    base = timm.create_model(model_name, global_pool='avg', num_classes=10 if 'resnet20' in model_name else 1000)
    base.to(device)
    with torch.no_grad():
        feat = base.forward_features(torch.zeros(1, 3, img_size, img_size, device=device))
    models = {}
    for head in heads:
        model = timm.create_model(model_name, global_pool='avg', num_classes=base.num_classes).to(device)
        model.load_state_dict(base.state_dict())
        parent, attr, _ = _find_global_pool(model)
        setattr(parent, attr, make_pool(head, feat.shape[1], feat.shape[-1], device, lam, normalize))
        models[head] = model
    return models


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _saved_bytes(fn: Callable[[], None]) -> int:
    seen = {}

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.device)
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _time_interleaved(steps: Dict[str, Callable[[], None]], device, reps: int, warmup: int) -> Dict[str, float]:
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    times = {k: [] for k in steps}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_model(model_name: str, img_size: int, batch: int, heads: List[str], device, reps: int, lam: float,
                normalize: bool = False):
    models = build_models(model_name, img_size, heads, device, lam, normalize)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, next(iter(models.values())).num_classes, (batch,), device=device)
    opts = {h: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for h, m in models.items()}

    def infer(model):
        def step():
            with torch.no_grad():
                model(x)
        return step

    def train(model, opt):
        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return step

    for m in models.values():
        m.eval()
    fwd = _time_interleaved({h: infer(m) for h, m in models.items()}, device, reps, warmup=2)
    for m in models.values():
        m.train()
    train_steps = {h: train(m, opts[h]) for h, m in models.items()}
    step = _time_interleaved(train_steps, device, reps, warmup=2)
    memory = {}
    for h, m in models.items():
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
            train_steps[h]()
            _sync(device)
            memory[h] = torch.cuda.max_memory_allocated()
        else:
            memory[h] = _saved_bytes(lambda: F.cross_entropy(m(x), y).backward())
    return [
        dict(model=model_name, img_size=img_size, batch=batch, head=h, fwd_s=fwd[h], train_s=step[h],
             fwd_img_s=batch / fwd[h], train_img_s=batch / step[h], memory_bytes=memory[h],
             train_vs_avg=step[h] / step['avg'], fwd_vs_avg=fwd[h] / fwd['avg'])
        for h in heads
    ]


def bench_layers(shape, heads: List[str], device, reps: int, lam: float, normalize: bool = False,
                 compile_heads: bool = False):
    """Forward+backward of each pooling layer alone; with `compile_heads`, each layer also as `<head>+compile`
    (`torch.compile`, default inductor backend), timed in the same interleaved run, so all ratios share one baseline:
    eager average pooling."""
    x = torch.randn(*shape, device=device, requires_grad=True)
    pools = {h: make_pool(h, shape[1], shape[-1], device, lam, normalize) for h in heads}
    if compile_heads:
        pools.update({f'{h}+compile': torch.compile(pools[h]) for h in heads})

    def fwd_bwd(pool):
        def step():
            pool(x).sum().backward()
            x.grad = None
        return step

    times = _time_interleaved({h: fwd_bwd(p) for h, p in pools.items()}, device, reps, warmup=2)
    return [dict(shape=list(shape), head=h, fwd_bwd_s=times[h], vs_avg=times[h] / times['avg']) for h in pools]


def machine_description(device) -> str:
    if device.type == 'cuda':
        hw = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
        except (OSError, StopIteration):
            pass
        hw = f'{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads'
    return f'{hw}; torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}'


def target_lines(results: dict) -> List[str]:
    """The issue's targets, as ratios of this run: routing (1 iteration) against average pooling."""
    def ratio(model, batch):
        rows = {r['head']: r for r in results['models'] if r['model'] == model and r['batch'] == batch}
        return rows['routing-1']['train_s'] / rows['avg']['train_s'] if 'routing-1' in rows else None

    lines = []
    for model, batch, limit in (('resnet20', 128, 1.03), ('resnet50', max(
            [r['batch'] for r in results['models'] if r['model'] == 'resnet50'] or [0]), 1.01)):
        value = ratio(model, batch)
        if value is not None:
            lines.append(f'- {model} training step at batch {batch}, routing (1 iteration) / average: {value:.3f} '
                         f'(target <= {limit}: {"met" if value <= limit else "NOT met"})')
    layer = {r['head']: r for r in results['layers']}
    if 'routing-1' in layer:
        value = layer['routing-1']['vs_avg']
        lines.append(f"- pooling layer alone on {tuple(layer['avg']['shape'])}, forward+backward, "
                     f'routing (1 iteration) / average: {value:.2f} '
                     f'(target <= 3: {"met" if value <= 3 else "NOT met"})')
    if 'routing-1+compile' in layer:
        value = layer['routing-1+compile']['vs_avg']
        lines.append(f'- the same, both compiled with torch.compile: routing-1+compile / eager average: {value:.2f} '
                     f'(target <= 3: {"met" if value <= 3 else "NOT met"}); / compiled average: '
                     f"{layer['routing-1+compile']['fwd_bwd_s'] / layer['avg+compile']['fwd_bwd_s']:.2f}")
    return lines


def to_markdown(results: dict) -> str:
    mem_label = 'peak MB' if results['device'] == 'cuda' else 'saved for backward MB'
    lines = [f"Machine: {results['machine']}", '', f'Command: `{results["command"]}`', '']
    lines += target_lines(results) + ['']
    lines += [f'| model | batch | head | inference img/s | train img/s | train step vs avg | {mem_label} |',
              '|---|---|---|---|---|---|---|']
    for r in results['models']:
        lines.append(
            f"| {r['model']} @{r['img_size']} | {r['batch']} | {r['head']} | {r['fwd_img_s']:.1f} | "
            f"{r['train_img_s']:.1f} | {r['train_vs_avg']:.3f} | {r['memory_bytes'] / 2 ** 20:.1f} |")
    if results['layers']:
        lines += ['', '| pooling layer alone | head | forward+backward ms | vs avg |', '|---|---|---|---|']
        for r in results['layers']:
            lines.append(f"| {tuple(r['shape'])} | {r['head']} | {r['fwd_bwd_s'] * 1e3:.1f} | {r['vs_avg']:.2f} |")
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--heads', nargs='+', default=list(HEADS), choices=HEADS)
    parser.add_argument('--resnet20-batches', type=int, nargs='*', default=[1, 8, 32, 128, 256])
    parser.add_argument('--resnet50-batches', type=int, nargs='*', default=None,
                        help='default: 1 8 32 on CPU, 1 8 32 128 256 on GPU')
    parser.add_argument('--layer-shape', type=int, nargs=4, default=[256, 2048, 7, 7])
    parser.add_argument('--reps', type=int, default=7, help='timed repetitions per head (median reported)')
    parser.add_argument('--lam', type=float, default=5.0, help='routing λ (does not change the cost)')
    parser.add_argument('--normalize', action='store_true',
                        help='routing heads normalise their children (the CIFAR ResNet and 4-conv defaults)')
    parser.add_argument('--compile', action='store_true',
                        help='also time each pooling layer alone compiled with torch.compile (`<head>+compile`)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: all)')
    parser.add_argument('--out', default=None, help='write the raw results as JSON here')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    heads = ['avg'] + [h for h in args.heads if h != 'avg']
    r50_batches = args.resnet50_batches if args.resnet50_batches is not None else (
        [1, 8, 32, 128, 256] if device.type == 'cuda' else [1, 8, 32])
    # the settings that change timings without changing the command line, e.g. glibc's allocator (see
    # docs/benchmarks.md: MALLOC_MMAP_MAX_=0 keeps freed map-sized buffers instead of returning them to the kernel)
    env = ' '.join(f'{k}={v}' for k, v in sorted(os.environ.items())
                   if k.startswith(('MALLOC_', 'TIMM_ROUTING_')) or k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'))
    command = ' '.join(([env] if env else []) + [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))
    results = dict(device=device.type, machine=machine_description(device), command=command, models=[], layers=[])
    for name, size, batches in (('resnet20', 32, args.resnet20_batches), ('resnet50', 224, r50_batches)):
        for batch in batches:
            results['models'] += bench_model(name, size, batch, heads, device, args.reps, args.lam, args.normalize)
            print(f'done {name} batch {batch}', file=sys.stderr, flush=True)
    if args.layer_shape:
        results['layers'] = bench_layers(
            tuple(args.layer_shape), heads, device, args.reps, args.lam, args.normalize, args.compile)
    print(to_markdown(results))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
