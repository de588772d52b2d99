"""The GPU path: training steps on CUDA, and GPU checkpoints that evaluate on a CPU. Skipped without a GPU."""

import math
import os
import subprocess
import sys

import pytest
import torch

import MNIST_evaluation
import MNIST_train
from MNIST_model import build_model, setting
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU on this machine')


def test_best_recipe_trains_on_the_gpu_and_its_learning_rate_reaches_it():
    hyper = {**setting('best'), 'epochs': 4, 'batch_size': 200}
    torch.manual_seed(0)
    model = build_model(hyper).cuda()
    optimizer, scheduler = MNIST_train.make_optimizer(model, hyper, 10)
    x, y = torch.rand(2000, 784, device='cuda'), torch.randint(0, 10, (2000,), device='cuda')
    x = model.straighten(x)
    lrs = [float(optimizer.param_groups[0]['lr'])]
    for _ in range(4):  # four epochs of ten steps each
        assert math.isfinite(MNIST_train.train(model, optimizer, scheduler, x, y, hyper))
        lrs.append(float(optimizer.param_groups[0]['lr']))
    assert max(lrs) > 10 * lrs[0] and lrs[-1] < lrs[len(lrs) // 2]


def test_gpu_steps_match_cpu_steps():
    def losses(device):
        torch.manual_seed(0)
        model = build_model(setting(2)).to(device)
        optimizer, _ = MNIST_train.make_optimizer(model, setting(2), 10)
        g = torch.Generator().manual_seed(1)
        x, y = torch.rand(2000, 784, generator=g), torch.randint(0, 10, (2000,), generator=g)
        batches = [(xb.to(device), yb.to(device)) for xb, yb in zip(x.split(200), y.split(200))]
        return [MNIST_train.train(model, optimizer, None, xb, yb, setting(2)) for xb, yb in batches]

    assert losses('cuda') == pytest.approx(losses('cpu'), rel=1e-3)


def test_gpu_checkpoint_evaluates_on_cpu(data_dir, tmp_path, capsys):
    common = ['--data-dir', str(data_dir), '--out-dir', str(tmp_path)]
    assert MNIST_train.main(['--setting', '2', '--epochs', '2', '--device', 'cuda', *common]) == 0
    assert MNIST_evaluation.main(['--device', 'cpu', *common]) == 0
    assert 'Setting 2: accuracy of the' in capsys.readouterr().out


def test_a_checkpoint_trained_on_cuda_loads_the_skeleton_way_where_no_gpu_is_seen(data_dir, tmp_path):
    common = ['--data-dir', str(data_dir), '--out-dir', str(tmp_path)]
    assert MNIST_train.main(['--setting', '2', '--epochs', '2', '--device', 'cuda', *common]) == 0
    state = torch.load(tmp_path / 'setting_2' / 'last.pth', weights_only=True)
    assert torch.equal(state['device_rng_state'], torch.cuda.get_rng_state())  # the GPU's generator is saved too
    (path,) = (tmp_path / 'setting_2').glob('epoch_*.pth')
    code = (
        'import sys, torch; from MNIST_model import MNIST_model; model = MNIST_model(); '
        "model.load_state_dict(torch.load(sys.argv[1])['model_state_dict']); print(torch.cuda.is_available())"
    )
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'PYTHONPATH': ROOT}
    result = subprocess.run([sys.executable, '-c', code, str(path)], capture_output=True, encoding='utf-8', env=env)
    assert result.returncode == 0 and result.stdout.split() == ['False'], result.stderr
