""" Weights shipped with the package, and model building that checks them

Each published tag has its safetensors file in `timm_routing/pretrained/<model>.<tag>.safetensors` (found through the
pretrained cfg's `file`, so `pretrained=True` works offline) and names the Hub repo of its published copy in
`hf_hub_id` (`timm-routing/<model>.<tag>`, built by `scripts/publish.py`).

`build_routing_model` is timm's `build_model_with_cfg` plus two checks, so that a bad weight file fails with its path
and the reason: the file must be a readable safetensors / torch checkpoint, and its tensor names must be the model's.
`load_weight_file` does the same for a file given on a command line (`evaluate --checkpoint`, `train_capsnet
--initial-checkpoint`); both read files through `_read_weight_file`, whose errors start with what the file is.
"""
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from timm.models import build_model_with_cfg, load_state_dict
from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg

__all__ = [
    'PRETRAINED_DIR', 'HUB_ORG', 'shipped', 'keep_default_tag', 'checkpoint_filter_fn', 'build_routing_model',
    'load_weight_file',
]

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / 'pretrained'
HUB_ORG = 'timm-routing'


def shipped(cfgs: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The tags of `cfgs` whose weights ship with the package, each given its packaged file and the Hub repo of its
    published copy. Tags without a file are left out, so that no tag claims weights it does not have."""
    out = {}
    for model_tag, cfg in cfgs.items():
        path = PRETRAINED_DIR / f'{model_tag}.safetensors'
        if path.is_file():
            out[model_tag] = dict(cfg, file=str(path), hf_hub_id=f'{HUB_ORG}/{model_tag}')
    return out


def keep_default_tag(default_cfgs: Dict[str, Any], architecture: str, tag: str = '') -> None:
    """Makes `tag` the default cfg of `architecture` again after `generate_default_cfgs`, which promotes the first tag
    with weights (e.g. keeps `resnet20` a CIFAR-10 architecture although only its grey expanded-MNIST tag has weights).
    Call it before the `@register_model` entrypoints, which read `default_cfgs`.

    Where `tag`'s weight file is absent from this installation (`shipped` left the tag out), the untagged cfg, which
    has no weights, becomes the default instead, so that the architecture never defaults to the wrong dataset's
    weights and the package still imports."""
    tags = default_cfgs[architecture].tags
    if tag not in tags:
        if '' not in tags:
            raise ValueError(f'{architecture}.{tag} has no weight file here and {architecture} no untagged cfg to '
                             f'default to; its tags are {list(tags)}.')
        tag = ''
    tags.remove(tag)
    tags.appendleft(tag)


def _read_weight_file(path, label: str, header_only: bool = False) -> Optional[Dict[str, Any]]:
    """Reads a weight file as timm's `load_state_dict` does, with errors that start with `label` and name the file.

    Args:
        path: The weight file.
        label: What the errors call the file, e.g. a command-line option or "Pretrained weights of <model>:".
        header_only: For a safetensors file, only read its header (timm reads the tensors itself afterwards) and
            return None.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a readable checkpoint.
    """
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f'{label} {path} does not exist.')
    try:
        if header_only and path.endswith('.safetensors'):
            from safetensors import safe_open
            with safe_open(path, framework='pt') as f:
                f.keys()
            return None
        return load_state_dict(path)
    except Exception as e:
        raise ValueError(f'{label} {path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:500]}).') from e


def load_weight_file(model: nn.Module, path, model_name: str, option: str = 'checkpoint') -> None:
    """Loads a weight file into `model` strictly, as timm's `load_checkpoint` does (safetensors, or the `state_dict`
    of a train.py / train_capsnet checkpoint), with errors that name `option` and the file.

    Args:
        model: The model, built as the file's weights expect (classes, input channels, model kwargs).
        path: The weight file.
        model_name: The name the errors give the model.
        option: What the errors call the file, e.g. the command-line option that named it.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a readable checkpoint, or its tensors are not `model`'s (names or shapes).
    """
    state_dict = _read_weight_file(path, option)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise ValueError(f'{option} {path} does not hold weights of {model_name} as built here '
                         f'({type(e).__name__}: {str(e)[:500]}).') from e


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Unwraps train.py checkpoints and checks that the tensor names are the model's.

    The classifier may be absent from the model (`num_classes=0`); timm adapts the first convolution and the
    classifier afterwards when `in_chans` or `num_classes` differ.

    Raises:
        ValueError: names missing from, or unknown to, the model; the message names the weight file.
    """
    for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    classifier = cfg.get('classifier') or ''
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    expected = set(model.state_dict())
    got = set(state_dict)
    missing = sorted(expected - got)
    unexpected = sorted(k for k in got - expected if not any(k.startswith(c + '.') for c in classifiers))
    if missing or unexpected:
        source = cfg.get('file') or cfg.get('hf_hub_id') or 'the pretrained checkpoint'
        raise ValueError(
            f'{source} does not hold weights of {cfg.get("architecture", type(model).__name__)}: '
            f'missing {missing[:8]}{"..." if len(missing) > 8 else ""}, '
            f'unexpected {unexpected[:8]}{"..." if len(unexpected) > 8 else ""}.')
    return state_dict


def build_routing_model(
        model_cls: type,
        variant: str,
        pretrained: bool = False,
        feature_cfg: Optional[Dict[str, Any]] = None,
        filter_fn: Optional[Any] = None,
        **kwargs: Any,
) -> nn.Module:
    """timm's `build_model_with_cfg` with the weight-file checks of this module; `filter_fn(state_dict, model)`
    adapts the checked state dict further (before timm's own first-conv and classifier adaptation)."""
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
        load_from, location = _resolve_pretrained_source(cfg.to_dict())
        if load_from == 'file':
            name = f'{cfg.architecture or variant}.{cfg.tag}' if cfg.tag else variant
            _read_weight_file(location, f'Pretrained weights of {name}:', header_only=True)
    return build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn if filter_fn is None else
        lambda state_dict, model: filter_fn(checkpoint_filter_fn(state_dict, model), model),
        feature_cfg=feature_cfg,
        **kwargs,
    )
