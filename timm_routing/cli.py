""" The `timm-routing` command (also `python -m timm_routing`)

`timm-routing models` builds every model the package registers with timm, runs a forward pass on one image of the
model's default input size and prints a table of name, parameters, GMACs, output shape and routing settings.
"""
import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

import timm

from .layers import RoutingPool2d
from .models import routing_model_names
from .models.backbones import _find_global_pool

__all__ = ['describe_model', 'main']


def _routing_settings(model: torch.nn.Module) -> str:
    pools = [m for m in model.modules() if isinstance(m, RoutingPool2d)]
    if not pools:
        return '-'
    p = pools[0]
    return f'capsule_dim={p.capsule_dim} iters={p.iters} lam={p.lam:g} normalize={p.normalize} act={p.activation}'


def describe_model(name: str) -> Dict[str, Any]:
    """Builds `name`, runs one forward pass at its default input size and returns its summary row.

    GMACs count the convolutions and linear layers (`torch.utils.flop_counter`, multiply-adds = FLOPs / 2); the
    routing's element-wise work (a few multiply-adds per feature-map element and iteration) is not included.
    """
    model = timm.create_model(name).eval()
    input_size = model.pretrained_cfg['input_size']
    x = torch.randn(1, *input_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(x)
    if not torch.isfinite(out).all():
        raise RuntimeError(f'{name}: non-finite output on a random input')
    return dict(
        name=name,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        gmacs=counter.get_total_flops() / 2e9,
        input_size='x'.join(str(s) for s in input_size),
        global_pool=_find_global_pool(model)[2].pool_type,
        output=tuple(out.shape),
        routing=_routing_settings(model),
    )


def _print_table(rows: List[Dict[str, Any]]) -> None:
    header = f"{'model':<24} {'params (M)':>10} {'GMACs':>8} {'input':>10} {'pool':>8}  routing"
    print(header)
    print('-' * len(header))
    for r in rows:
        print(
            f"{r['name']:<24} {r['params_m']:>10.3f} {r['gmacs']:>8.4f} {r['input_size']:>10} {r['global_pool']:>8}  "
            f"{r['routing']}")


def _cmd_models(args: argparse.Namespace) -> int:
    names = args.models or routing_model_names()
    unknown = [n for n in names if n not in timm.list_models()]
    if unknown:
        print(f'timm-routing: unknown model(s): {", ".join(unknown)}', file=sys.stderr)
        return 2
    _print_table([describe_model(n) for n in names])
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-routing', description=__doc__.split('\n\n')[0].strip())
    sub = parser.add_subparsers(dest='command')
    p_models = sub.add_parser('models', help='build every registered model, run a forward pass, print a summary')
    p_models.add_argument('models', nargs='*', help='model names (default: every model of the package)')
    p_models.set_defaults(func=_cmd_models)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(['models'])
    return args.func(args)
