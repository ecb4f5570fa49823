"""Every family trains under DistributedDataParallel (gloo, 2 CPU processes), and converts to SyncBatchNorm."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

import timm

FAMILIES = {  # one model per family, with a small input
    'resnet20_routing': (3, 32, 32),
    'convnet4_routing': (1, 28, 28),
    'resnet50_routing': (3, 64, 64),
    'capsnet_resnet20': (1, 40, 40),  # training mode: the reconstruction loss rides on the output
    'capsnet': (1, 28, 28),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_step(rank: int, world_size: int, port: int, out_dir: str):
    import timm_routing  # noqa: F401  (spawned processes import afresh)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    results = {}
    for name, input_size in FAMILIES.items():
        torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
        model = timm.create_model(name, num_classes=5, in_chans=input_size[0])
        ddp = DistributedDataParallel(model, find_unused_parameters=False)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        torch.manual_seed(100 + rank)  # different data per rank
        x, y = torch.randn(4, *input_size), torch.randint(0, 5, (4,))
        nn.functional.cross_entropy(ddp(x), y).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        opt.step()
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        results[name] = dict(missing=missing, max_diff=max((g - flat).abs().max().item() for g in gathered))
    torch.save(results, f'{out_dir}/rank{rank}.pt')
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason='torch.distributed is not available in this torch build')
def test_one_ddp_step_leaves_identical_parameters(tmp_path):
    mp.spawn(_ddp_step, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        results = torch.load(tmp_path / f'rank{rank}.pt')
        assert set(results) == set(FAMILIES)
        for name, r in results.items():
            assert r['missing'] == [], f'{name}: parameters without gradient (unused) on rank {rank}: {r["missing"]}'
            assert r['max_diff'] == 0.0, f'{name}: parameters differ across ranks after a step ({r["max_diff"]})'


@pytest.mark.parametrize('name', list(FAMILIES))
def test_sync_batchnorm_conversion(name):
    input_size = FAMILIES[name]
    model = timm.create_model(name, in_chans=input_size[0]).eval()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(timm.create_model(name, in_chans=input_size[0])).eval()
    converted.load_state_dict(model.state_dict())  # same parameter and buffer names: checkpoints interchange
    batchnorms = [m for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(isinstance(m, nn.SyncBatchNorm) for m in batchnorms)
    x = torch.randn(2, *input_size)
    # SyncBatchNorm synchronises statistics only on accelerators in training; evaluation uses the running stats
    torch.testing.assert_close(converted(x), model(x))
