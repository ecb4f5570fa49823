"""timm's own model suite, run on this package's models.

`tests/test_models.py` of the timm sdist that matches the installed timm is fetched from PyPI at test time (with pip,
so the machine's index configuration applies), cached under `~/.cache/timm-routing/` (or `$TIMM_ROUTING_CACHE`), and
its tests are collected here. `conftest.py` keeps the parametrisations whose `model_name` is one of this package's
models and deselects the rest (timm's own models and the tests written for one timm architecture).

Upstream lists the models that implement `forward_intermediates` by module name; while the upstream module is
imported, `timm.list_models(module=...)` also answers with this package's modules, which all implement it.

Where PyPI cannot be reached the module is skipped, unless `TIMM_ROUTING_REQUIRE_UPSTREAM=1` (set by `.ci/run`),
which turns a failed fetch into an error.
"""
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import timm

import timm_routing  # noqa: F401  registers the models before upstream collects `list_models()`
from timm_routing.models import routing_model_modules

UPSTREAM_FILE = 'tests/test_models.py'


def _cache_dir() -> Path:
    root = os.environ.get('TIMM_ROUTING_CACHE') or Path.home() / '.cache' / 'timm-routing'
    return Path(root) / 'upstream' / f'timm-{timm.__version__}'


def fetch_upstream_test_models() -> Path:
    """Path of timm's `tests/test_models.py` for the installed timm, downloading the sdist once."""
    target = _cache_dir() / 'test_models.py'
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
            f'timm=={timm.__version__}', '--dest', tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        sdists = list(Path(tmp).glob('timm-*.tar.gz'))
        if proc.returncode != 0 and not sdists:
            raise RuntimeError(
                f'pip download of the timm=={timm.__version__} sdist failed: {proc.stderr.strip()[-500:]}')
        if not sdists:
            raise RuntimeError(f'pip download gave no timm sdist for timm=={timm.__version__}')
        with tarfile.open(sdists[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith('/' + UPSTREAM_FILE)), None)
            if member is None:
                raise RuntimeError(f'{sdists[0].name} has no {UPSTREAM_FILE}')
            data = tar.extractfile(member).read()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_target = target.with_suffix('.part')
    tmp_target.write_bytes(data)
    tmp_target.replace(target)
    return target


def _load_upstream(path: Path):
    original = timm.list_models
    ours = routing_model_modules()

    def list_models_with_ours(*args, **kwargs):
        module = kwargs.get('module', '')
        if module:
            kwargs['module'] = ([module] if isinstance(module, str) else list(module)) + ours
        return original(*args, **kwargs)

    spec = importlib.util.spec_from_file_location('timm_upstream_test_models', path)
    module = importlib.util.module_from_spec(spec)
    timm.list_models = list_models_with_ours
    try:
        spec.loader.exec_module(module)
    finally:
        timm.list_models = original
    return module


try:
    _upstream = _load_upstream(fetch_upstream_test_models())
except Exception as e:  # no network to PyPI, or an sdist without the suite
    if os.environ.get('TIMM_ROUTING_REQUIRE_UPSTREAM') == '1':
        raise
    pytest.skip(f'timm upstream model tests unavailable: {e}', allow_module_level=True)

# the upstream tests and fixtures, collected as this module's own
globals().update({
    name: obj for name, obj in vars(_upstream).items()
    if name.startswith('test_') or getattr(obj, '_fixture_function_marker', None) is not None
    or type(obj).__name__ == 'FixtureFunctionDefinition'
})
