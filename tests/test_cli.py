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
    assert 'capsule_dim=16 iters=1 lam=5 normalize=True' in rows['resnet20_routing']
    assert rows['resnet20'].split()[-1] == '-'


def test_default_command_is_models():
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    assert 'convnet4_routing' in proc.stdout


def test_unknown_model_is_a_one_line_error():
    proc = _run('models', 'resnet21_routing')
    assert proc.returncode == 2
    assert proc.stderr.strip() == 'timm-routing: unknown model(s): resnet21_routing'


def test_demo_writes_heatmaps(tmp_path):
    import numpy as np
    from PIL import Image
    proc = _run('demo', '--out', str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith('convnet4_routing.cpu_fmnist: predictions')
    assert proc.stdout.strip().endswith('/10 top-1 correct')
    heatmaps = sorted(tmp_path.glob('*_heatmap.png'))
    assert len(heatmaps) == 10
    for path in heatmaps[:3]:
        img = np.asarray(Image.open(path))
        assert img.shape == (112, 112, 3) and img.std() > 0  # 28x28 enlarged 4 times, not constant
    grid = Image.open(tmp_path / 'grid.png')
    assert grid.size == (10 * 112, 2 * 112)


def test_explain_and_its_errors(tmp_path):
    from PIL import Image
    image = tmp_path / 'shirt.png'
    Image.new('L', (40, 30), 128).save(image)
    proc = _run('explain', 'convnet4_routing.cpu_fmnist', str(image), '--out', str(tmp_path / 'out'), '--group', '1')
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / 'out' / 'shirt_heatmap.png').is_file()
    for args, message in [
        (('explain', 'resnet21_routing', str(image)), "timm-routing: unknown model 'resnet21_routing'"),
        (('explain', 'convnet4_routing.cpu_fmnist', str(tmp_path / 'missing.png')), 'timm-routing: cannot read image'),
        (('explain', 'capsnet', str(image)), "timm-routing: model 'capsnet' has no pretrained weights"),
        (('explain', 'convnet4_max.cpu_fmnist', str(image)), 'timm-routing: ConvNet4 has 0 routing layers'),
        (('explain', 'convnet4_routing.cpu_fmnist', str(image), '--group', '9'), 'timm-routing: group 9 out of range'),
    ]:
        proc = _run(*args)
        assert proc.returncode == 2 and proc.stderr.startswith(message), (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1


def test_list_and_eval(tmp_path):
    import numpy as np
    from PIL import Image
    proc = _run('list')
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert 'cpu_fmnist (' in rows['convnet4_routing'] and 'cpu_mnist_shift (' in rows['resnet20']
    assert rows['capsnet'].split()[-1] == '-'
    # an ImageFolder the test makes: eval reports top-1 and top-5 over its images
    for cls in ('a', 'b'):
        (tmp_path / 'test' / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(tmp_path / 'test' / cls / f'{i}.png')
    proc = _run('eval', 'convnet4_routing.cpu_fmnist', '--data', str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('convnet4_routing.cpu_fmnist: top-1 ') and 'on 6 images' in proc.stdout
    proc = _run('eval', 'convnet4_routing.cpu_fmnist', '--data', str(tmp_path / 'nothing'))
    assert proc.returncode == 2 and 'is neither a .npz file nor a folder' in proc.stderr
