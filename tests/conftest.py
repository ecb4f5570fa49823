import pytest

from timm_routing.models import routing_model_names

_UPSTREAM_MODULE = 'test_timm_upstream.py'


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
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
