"""scripts/benchmark_heads.py runs end to end on tiny shapes (no timing is asserted) and builds the heads it names."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'scripts'))
import benchmark_heads  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / 'docs'


def test_routing_heads_take_lambda_and_normalisation():
    pool = benchmark_heads.make_pool('routing-2', 64, 8, 'cpu', lam=1.0, normalize=True)
    assert (pool.iters, pool.lam, pool.normalize) == (2, 1.0, True)
    assert benchmark_heads.make_pool('routing-1', 64, 8, 'cpu', lam=5.0).normalize is False


def test_script_writes_every_head_and_the_layer_rows(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    benchmark_heads.main(['--device', 'cpu', '--heads', 'avg', 'routing-1', '--resnet20-batches', '2',
                          '--resnet50-batches', '--layer-shape', '2', '32', '4', '4', '--reps', '1', '--normalize',
                          '--threads', '1', '--out', str(out)])
    result = json.loads(out.read_text())
    assert [(r['model'], r['batch'], r['head']) for r in result['models']] == [
        ('resnet20', 2, 'avg'), ('resnet20', 2, 'routing-1')]
    assert [r['head'] for r in result['layers']] == ['avg', 'routing-1'] and '--normalize' in result['command']
    assert '| (2, 32, 4, 4) | routing-1 |' in capsys.readouterr().out


def test_compile_adds_a_compiled_row_per_layer(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('MALLOC_MMAP_MAX_', '0')  # read by glibc at start-up only: here just recorded
    out = tmp_path / 'bench.json'
    benchmark_heads.main(['--device', 'cpu', '--heads', 'avg', 'routing-1', '--resnet20-batches', '--resnet50-batches',
                          '--layer-shape', '2', '32', '4', '4', '--reps', '1', '--compile', '--threads', '1',
                          '--out', str(out)])
    result = json.loads(out.read_text())
    assert result['models'] == [] and result['command'].startswith('MALLOC_MMAP_MAX_=0 ')
    assert [r['head'] for r in result['layers']] == ['avg', 'routing-1', 'avg+compile', 'routing-1+compile']
    assert 'routing-1+compile / eager average' in capsys.readouterr().out


@pytest.mark.parametrize('name', [
    'benchmarks-cpu.json', 'benchmarks-cpu-targets.json', 'benchmarks-gpu-h200.json',
    'benchmarks-cpu-targets-xeon.json', 'benchmarks-cpu-targets-xeon-run1.json', 'benchmarks-cpu-layer-xeon.json',
    'benchmarks-cpu-layer-xeon-normalized.json',
])
def test_benchmark_tables_in_the_docs_are_what_their_json_renders(name):
    """docs/benchmarks.md shows these runs as `to_markdown` renders their JSON: every table row and target line."""
    results = json.loads((DOCS / name).read_text())
    doc = (DOCS / 'benchmarks.md').read_text().splitlines()
    rendered = [line for line in benchmark_heads.to_markdown(results).splitlines() if line.startswith(('| ', '- '))]
    assert [line for line in rendered if line not in doc] == []
