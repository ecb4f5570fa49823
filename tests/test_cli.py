"""The README's main job, `python -m timm_routing models`, through a subprocess."""
import subprocess
import sys

from timm_routing.models import routing_model_names


def _run(*args):
    return subprocess.run([sys.executable, '-m', 'timm_routing', *args], capture_output=True, text=True, timeout=300)


def test_models_table_lists_every_model():
    proc = _run('models')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ['model', 'params', '(M)']
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == set(routing_model_names())
    assert rows['resnet20_routing'].split()[1] == '0.270'
    assert 'capsule_dim=16 iters=1 lam=5 normalize=False' in rows['resnet20_routing']
    assert rows['resnet20'].split()[-1] == '-'


def test_default_command_is_models():
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    assert 'convnet4_routing' in proc.stdout


def test_unknown_model_is_a_one_line_error():
    proc = _run('models', 'resnet21_routing')
    assert proc.returncode == 2
    assert proc.stderr.strip() == 'timm-routing: unknown model(s): resnet21_routing'
