import torch

from benchmarks.bench_epoch import by_hand_epoch
from MNIST_model import MNIST_model, setting
from MNIST_train import make_optimizer, train
from tests.idx import synthetic_digits


def test_by_hand_epoch_trains_like_the_project():
    """The benchmark's hand-written gradients and flat Adam take the same steps as autograd and torch.optim."""
    images, y = synthetic_digits(1000, seed=0)
    x = images.flatten(1) / 255
    torch.manual_seed(1)
    by_hand = by_hand_epoch(x, y, x[:100])
    torch.manual_seed(1)
    model = MNIST_model()
    model.fit_input(x)
    optimizer, _ = make_optimizer(model, setting(2), 5)
    losses = []
    for epoch in range(3):
        torch.manual_seed(10 + epoch)
        losses.append(by_hand())
        torch.manual_seed(10 + epoch)
        assert abs(losses[-1] - train(model, optimizer, None, x, y, setting(2))) < 1e-5
    assert losses[2] < losses[0] - 0.1  # it learned, so the steps compared were real ones
