#!/usr/bin/env python3
""" Which timm architectures take a routing head: `add_routing_head` on one small model per family

    python scripts/backbone_sweep.py                        # the default list below
    python scripts/backbone_sweep.py resnet18 swin_tiny_patch4_window7_224 --capsule-dim 8

For each model (random weights, its default input size, batch 2): builds it, keeps its output, puts a routing head on
it with λ = 0 and raw children (which is average pooling, so the output must not change), then runs a training step
with λ = 5 and `reset_classifier(5)`. Prints one row per model: `ok` with the feature format and the largest output
change at λ = 0 relative to the largest output (float32 rounding: about 1e-7), or `refused` with the ValueError `add_routing_head` gave (no feature-map pooling to replace, a
capsule size that does not divide the features), or `FAILED` with any other exception, which is a bug.
"""
import argparse
import sys
from typing import Optional, Sequence

import torch

import timm

from timm_routing.models import add_routing_head
from timm_routing.models.backbones import _find_global_pool

DEFAULT_MODELS = (
    'resnet18 resnet26d seresnext26d_32x4d regnetx_002 regnety_002 efficientnet_b0 tf_efficientnetv2_b0 mobilenetv2_050 '
    'mobilenetv3_small_050 mobilenetv4_conv_small mnasnet_050 fbnetv3_b hardcorenas_a lcnet_050 mixnet_s tinynet_e '
    'ghostnet_100 ghostnetv2_100 rexnet_100 densenet121 dla34 dpn48b hrnet_w18_small inception_v3 xception41 vgg11 '
    'repvgg_a0 mobileone_s0 res2net50_14w_8s resnest14d skresnet18 nf_resnet26 regnetz_005 cspresnet50 selecsls42b '
    'hgnet_tiny convnext_atto convnextv2_atto inception_next_tiny poolformer_s12 caformer_s18 starnet_s1 fastvit_t8 '
    'mobilevit_xxs efficientvit_b0 edgenext_xx_small coatnet_0_rw_224 maxvit_tiny_rw_224 davit_tiny focalnet_tiny_srf '
    'swin_tiny_patch4_window7_224 sequencer2d_s vit_tiny_patch16_224 levit_128s repvit_m0_9 efficientformer_l1 '
    'mambaout_femto').split()


def sweep_one(name: str, capsule_dim: int) -> str:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7).eval()
    x = torch.randn(2, *model.pretrained_cfg.get('input_size', (3, 224, 224)))
    with torch.no_grad():
        expected = model(x)
    try:
        add_routing_head(model, capsule_dim=capsule_dim, lam=0.0)
    except ValueError as e:
        return f'refused  {e}'
    with torch.no_grad():
        change = ((model(x) - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()
    model.reset_classifier(5, 'routing')
    pool = _find_global_pool(model)[2]
    pool.lam = 5.0
    model.train()
    model(x).sum().backward()
    return f'ok       {pool.input_fmt}, output change at λ = 0: {change:.1e} of the largest output'


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('models', nargs='*', default=DEFAULT_MODELS)
    parser.add_argument('--capsule-dim', type=int, default=16)
    args = parser.parse_args(argv)
    failed = 0
    for name in args.models:
        try:
            result = sweep_one(name, args.capsule_dim)
        except Exception as e:  # noqa: BLE001  a bug to report, not to stop the sweep
            result = f'FAILED   {type(e).__name__}: {e}'
            failed += 1
        print(f'{name:32s} {result}', flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
