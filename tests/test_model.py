import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from MNIST_model import ACTIVATIONS, Config, MNIST_model, setting
from tests.conftest import ROOT
from warps import deskew, warp


def test_default_model_is_the_assignments():
    model = MNIST_model()
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 200), (200, 200), (200, 200), (200, 10)]
    assert sum(p.numel() for p in model.parameters()) == 239_410
    assert [type(m) for m in model.net].count(nn.ReLU) == 3


def test_output_is_raw_logits():
    model = MNIST_model()
    assert isinstance(model.net[-1], nn.Linear)  # nothing after the last layer
    logits = model(torch.rand(64, 784))
    assert logits.shape == (64, 10)
    assert (logits < 0).any()  # no ReLU on the output
    assert not torch.allclose(logits.exp().sum(1), torch.ones(64))  # no softmax either


def test_accepts_image_shaped_input():
    model = MNIST_model()
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(model(x), model(x.view(5, 784)))


def test_he_initialisation():
    torch.manual_seed(0)
    for layer in (m for m in MNIST_model().net if isinstance(m, nn.Linear)):
        expected = math.sqrt(2 / layer.in_features)
        assert abs(layer.weight.std().item() - expected) / expected < 0.05
        assert abs(layer.weight.mean().item()) < 0.01
        assert torch.all(layer.bias == 0)


def test_xavier_initialisation():
    torch.manual_seed(0)
    layer = MNIST_model(activation='tanh', init='xavier').net[0]
    expected = math.sqrt(2 / (784 + 200))
    assert abs(layer.weight.std().item() - expected) / expected < 0.05


def test_input_standardisation_is_fitted_and_saved():
    model = MNIST_model()
    x = torch.rand(100, 784)
    before = model(x)
    model.fit_input(x)
    assert not torch.allclose(model(x), before)
    standardised = x * model.input_scale + model.input_shift
    assert standardised.mean(0).abs().max() < 1e-5
    assert {'input_scale', 'input_shift'} <= set(model.state_dict())


@pytest.mark.parametrize('activation', sorted(ACTIVATIONS))
def test_every_activation_runs_forward_and_backward(activation):
    model = MNIST_model(activation=activation, init='xavier' if activation in ('sigmoid', 'tanh') else 'he')
    logits = model(torch.rand(8, 784))
    assert logits.shape == (8, 10)
    nn.functional.cross_entropy(logits, torch.arange(8)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_maxout_takes_the_larger_of_two_pieces():
    model = MNIST_model(activation='maxout')
    assert model.net[0].out_features == 400 and model.net[2].in_features == 200
    assert torch.equal(model.net[1](torch.tensor([[1.0, 5.0, -2.0, -3.0]])), torch.tensor([[5.0, -2.0]]))


def test_dropout_only_when_asked():
    assert not any(isinstance(m, nn.Dropout) for m in MNIST_model().net)
    assert sum(isinstance(m, nn.Dropout) for m in MNIST_model(dropout=0.1).net) == 3


def test_settings_table_is_the_assignments():
    expected = {1: ('Adadelta', 0.1, 0), 2: ('Adam', 1e-4, 0), 3: ('Adadelta', 0.1, 0.01), 4: ('Adam', 1e-4, 0.01)}
    for name, (optimizer, lr, decay) in expected.items():
        s = setting(name)
        assert (s['optimizer'], s['lr'], s['weight_decay']) == (optimizer, lr, decay)
        assert (s['batch_size'], s['activation'], s['layers'], s['width'], s['epochs'], s['init']) == (
            200,
            'relu',
            4,
            200,
            100,
            'he',
        )
    assert Config.groups['all'] == [1, 2, 3, 4]


def test_deskew_stands_a_slanted_stroke_upright_in_the_centre():
    image = torch.zeros(28, 28)
    for r in range(4, 24):
        image[r, 4 + r // 2] = 1.0  # a stroke leaning right, off centre
    straight = deskew(image.view(1, 784)).view(28, 28)
    rows = straight.sum(1) > 0.5
    centres = (straight * torch.arange(28.0)).sum(1)[rows] / straight.sum(1)[rows]
    assert centres.max() - centres.min() < 1.5  # upright: every row's ink in the same column, within a pixel
    assert abs(centres.mean() - 13.5) < 1 and abs(straight.sum() - image.sum()) < 0.5
    assert not deskew(torch.zeros(2, 784)).any()  # a blank image stays blank, no NaN
    assert torch.equal(MNIST_model(deskew=True).straighten(image.view(1, 784)), straight.view(1, 784))
    assert torch.equal(MNIST_model().straighten(image.view(1, 784)), image.view(1, 784))


def test_warp_is_the_affine_grid_sampling_it_replaces():
    """warp() computes positions as one matrix product; the old code built them with F.affine_grid."""
    x = torch.rand(6, 784)
    theta = torch.eye(2, 3) + 0.2 * torch.randn(6, 2, 3)
    grid = F.affine_grid(theta, (6, 1, 28, 28), align_corners=False)
    expected = F.grid_sample(x.view(6, 1, 28, 28), grid, align_corners=False).view(6, 784)
    assert torch.allclose(warp(x, theta), expected, atol=1e-5)


@pytest.mark.parametrize(
    'option',
    [dict(activation='tanh'), dict(deskew=True), dict(dropout=0.1), dict(activation='maxout'), dict(width=100)],
)
def test_weights_refuse_a_network_built_with_other_options(option):
    """The skeleton's MNIST_model().load_state_dict(...) names the option that differs instead of going wrong."""
    state = MNIST_model(**option).state_dict()
    ((key, value),) = option.items()
    with pytest.raises(ValueError, match=f'{key}={value!r}.*build it as MNIST_model\\(.*{key}={value!r}'):
        MNIST_model().load_state_dict(state)
    MNIST_model(**option).load_state_dict(state)  # the right network loads them


def test_importing_the_model_changes_nothing_process_wide():
    code = (
        'import matplotlib, torch; matplotlib.use("svg"); import MNIST_model; '
        'print(matplotlib.get_backend(), (torch.tensor([1e-39]) * 1.0).item() > 0)'
    )
    out = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, encoding='utf-8', cwd=ROOT, check=True
    ).stdout
    assert out.split() == ['svg', 'True']  # the backend the user chose, and denormals not flushed


def test_the_model_file_stands_alone():
    """MNIST_model.py needs torch, torchvision and the warps of its deskewing: no plotting, processes or run files."""
    code = (
        'import sys, torch, torchvision; before = set(sys.modules); import MNIST_model; '
        'print(*sorted(m.split(".")[0] for m in set(sys.modules) - before))'
    )
    out = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, encoding='utf-8', cwd=ROOT, check=True
    ).stdout
    assert set(out.split()) == {'MNIST_model', 'warps'}
