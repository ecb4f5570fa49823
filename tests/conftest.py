import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # every test runs offline; set before huggingface_hub is imported

import pytest  # noqa: E402
from timm.models import get_pretrained_cfg  # noqa: E402

from timm_routing.models import routing_model_names  # noqa: E402

_UPSTREAM_MODULE = 'test_timm_upstream.py'
_HUB_WEIGHT_TESTS = ('test_model_load_pretrained', 'test_model_features_pretrained')
# timm's feature tests require three feature levels; Sabour's CapsNet has two convolutions (Conv1, PrimaryCaps)
_THREE_LEVEL_TESTS = ('test_model_forward_features', 'test_model_forward_intermediates')
_TWO_LEVEL_MODELS = ('capsnet',)


def _needs_hub(model_name: str) -> bool:
    cfg = get_pretrained_cfg(model_name)
    return cfg is not None and not cfg.file and not cfg.state_dict


def pytest_collection_modifyitems(config, items):
    """Keeps, of timm's upstream model suite, the tests parametrised with one of this package's models."""
    ours = set(routing_model_names())
    keep, drop = [], []
    for item in items:
        if item.fspath.basename == _UPSTREAM_MODULE:
            callspec = getattr(item, 'callspec', None)
            model_name = callspec.params.get('model_name') if callspec else None
            if model_name is None or model_name.split('.')[0] not in ours:
                drop.append(item)
                continue
            item.add_marker(pytest.mark.upstream)
            if item.originalname in _THREE_LEVEL_TESTS and model_name.split('.')[0] in _TWO_LEVEL_MODELS:
                item.add_marker(pytest.mark.skip(
                    reason=f"timm's {item.originalname} requires three feature levels; {model_name} has two "
                           f"(Conv1, PrimaryCaps), checked in tests/test_capsnet.py"))
            if item.originalname in _HUB_WEIGHT_TESTS and _needs_hub(model_name):
                item.add_marker(pytest.mark.skip(
                    reason=f"{model_name} loads timm's ImageNet weights from the Hugging Face Hub, which the tests "
                           f"cannot reach; tests/test_backbones.py loads them from a local checkpoint instead"))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
