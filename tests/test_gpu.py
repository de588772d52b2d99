"""The GPU path: CUDA-graph steps, and GPU checkpoints that evaluate on a CPU. Skipped without a GPU."""
import pytest
import torch

import MNIST_evaluation
import MNIST_train
from MNIST_model import MNIST_model, build_model, setting

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU on this machine')


def run_steps(hyper, warmup, n=12):
    torch.manual_seed(0)
    model = MNIST_model().cuda()
    optimizer, scheduler = MNIST_train.make_optimizer(model, hyper, n)
    step = MNIST_train.make_step(model, optimizer, hyper, warmup=warmup)
    x, y = torch.rand(n * 200 + 50, 784, device='cuda'), torch.randint(0, 10, (n * 200 + 50,), device='cuda')
    losses = [step(x[i:i + 200], y[i:i + 200]).item() for i in range(0, len(x), 200)]  # last batch is short
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize('name', [1, 2, 3, 4])
def test_graph_replay_matches_ordinary_steps(name):
    eager_losses, eager_params = run_steps(setting(name), warmup=10**9)
    graph_losses, graph_params = run_steps(setting(name), warmup=3)
    assert graph_losses == pytest.approx(eager_losses, rel=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(eager_params, graph_params))


def test_best_recipe_runs_as_a_graph_and_its_learning_rate_reaches_it():
    hyper = {**setting('best'), 'epochs': 1}
    torch.manual_seed(0)
    model = build_model(hyper).cuda()  # the best recipe's model deskews inside the graph
    optimizer, scheduler = MNIST_train.make_optimizer(model, hyper, 40)
    step = MNIST_train.make_step(model, optimizer, hyper)
    x, y = torch.rand(8000, 784, device='cuda'), torch.randint(0, 10, (8000,), device='cuda')
    lrs = []
    for xb, yb in zip(x.split(200), y.split(200)):
        assert torch.isfinite(step(xb, yb))
        scheduler.step()
        lrs.append(float(optimizer.param_groups[0]['lr']))
    assert max(lrs) > 10 * lrs[0] and lrs[-1] < lrs[len(lrs) // 2]


def test_gpu_checkpoint_evaluates_on_cpu(data_dir, tmp_path, capsys):
    common = ['--data-dir', str(data_dir), '--out-dir', str(tmp_path)]
    assert MNIST_train.main(['--setting', '2', '--epochs', '2', '--device', 'cuda', *common]) == 0
    assert MNIST_evaluation.main(['--device', 'cpu', *common]) == 0
    assert 'Setting 2: accuracy of the' in capsys.readouterr().out
