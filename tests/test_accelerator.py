"""The commands on a device that is not the CPU: tests.testdevice on every machine, and CUDA where there is a GPU.
Each command runs in a process of its own, as the device is registered in it for good."""

import csv
import json

import pytest
import torch

from tests.photos import photo
from tests.test_reliability import ctrl_c_at_epoch, history_without_times

DEVICES = ['testdevice', *(['cuda'] if torch.cuda.is_available() else [])]  # CUDA too, where there is a GPU
STOP_AT_EPOCH_3 = """
import MNIST_train
real_train, epochs = MNIST_train.train, []
def train(*args):
    epochs.append(1)
    if len(epochs) == 3:
        raise KeyboardInterrupt  # Ctrl-C
    return real_train(*args)
MNIST_train.train = train
"""


@pytest.fixture(params=DEVICES)
def on_device(request, harness):
    """Run MNIST_train or MNIST_evaluation on the accelerator, which --device auto picks (`setup`: code to run
    first)."""

    def run(script, *args, setup='', **kwargs):
        register = 'import tests.testdevice' if request.param == 'testdevice' else ''
        return harness(script, f'{register}\n{setup}', *args, **kwargs)

    run.device = request.param
    return run


def read_csv(path):
    with open(path, encoding='utf-8-sig', newline='') as f:
        return list(csv.DictReader(f))


def test_accelerator_trains_a_setting_and_evaluates_it_into_the_report(on_device, run_main, tmp_path):
    trained = on_device('MNIST_train', '--setting', '2', '--epochs', '2')
    assert trained.returncode == 0, trained.stderr
    history = json.loads((tmp_path / 'out' / 'setting_2' / 'history.json').read_text(encoding='utf-8'))
    assert history['device'].startswith(on_device.device) and len(history['epochs']) == 2
    evaluated = on_device('MNIST_evaluation')
    assert evaluated.returncode == 0 and evaluated.stderr == '', evaluated.stderr
    assert 'Setting 2: accuracy of the' in evaluated.stdout
    report = read_csv(tmp_path / 'out' / 'report.csv')
    for picture in ('val_accuracy.png', 'confusion_matrix.png', 'mistakes.png'):
        assert (tmp_path / 'out' / picture).stat().st_size > 0
    assert run_main('MNIST_evaluation.py', '--device', 'cpu').returncode == 0  # the same checkpoint on the CPU
    assert read_csv(tmp_path / 'out' / 'report.csv')[0]['Accuracy'] == report[0]['Accuracy']


def test_accelerator_reads_your_own_digits(on_device, run_main, trained, data_dir, tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    x = torch.zeros(3, 784)
    x.view(3, 28, 28)[:, 6:22, 12:16] = 1
    paths = [str(photo(x[i], i, images)) for i in range(3)]
    result = on_device('MNIST_evaluation', '--image', *paths)
    assert result.returncode == 0 and result.stderr == '', result.stderr
    assert [line.split(':')[0] for line in result.stdout.splitlines()[1:-1]] == paths
    read = read_csv(trained / 'own_digits.csv')
    assert run_main('MNIST_evaluation.py', '--image', *paths, '--device', 'cpu').returncode == 0
    on_cpu = read_csv(trained / 'own_digits.csv')
    assert [row['digit'] for row in read] == [row['digit'] for row in on_cpu]
    assert all(abs(float(a[d]) - float(b[d])) < 1e-3 for a, b in zip(read, on_cpu) for d in '0123456789')


def last_state(out):
    return torch.load(out / 'setting_best' / 'last.pth', weights_only=True)


def assert_carried(resumed, uninterrupted, stopped):
    """A run resumed on another device, from the state `stopped` after epoch 2, carried its weights, its optimizer's
    state and its learning-rate schedule: after epoch 3 its learning rate and its optimizer's steps are those of the
    uninterrupted run, and its weights are nearer to that run's than half the way that one epoch of training moves
    them (the other device draws other random warps, so they are not the same)."""

    def steps(state):
        return [float(s['step']) for s in state['optimizer_state_dict']['state'].values()]

    def distance(a, b):
        a, b = a['model_state_dict'], b['model_state_dict']
        squares = [(a[k] - b[k]).square().sum() for k in a if torch.is_tensor(a[k]) and a[k].is_floating_point()]
        return sum(squares).sqrt().item()

    assert steps(resumed) == steps(uninterrupted) and steps(stopped) != steps(uninterrupted)
    lr = [state['optimizer_state_dict']['param_groups'][0]['lr'] for state in (resumed, uninterrupted, stopped)]
    assert lr[0] == lr[1] != lr[2]
    off, one_epoch = distance(resumed, uninterrupted), distance(stopped, uninterrupted)
    assert off < one_epoch / 2, (off, one_epoch)


def test_accelerator_run_resumes_on_the_cpu_with_one_warning(on_device, run_main, tmp_path):
    assert on_device('MNIST_train', '--setting', 'best', '--epochs', '3', out=tmp_path / 'ref').returncode == 0
    assert on_device('MNIST_train', '--setting', 'best', '--epochs', '3', setup=STOP_AT_EPOCH_3).returncode == 130
    stopped = last_state(tmp_path / 'out')
    resumed = run_main('MNIST_train.py', '--setting', 'best', '--epochs', '3', '--device', 'cpu', '--resume')
    assert resumed.returncode == 0, resumed.stderr
    folder = tmp_path / 'out' / 'setting_best'
    warning = f'warning: {folder} continues on cpu after training on {on_device.device}: not bit-exact'
    assert resumed.stderr.strip() == warning
    history = json.loads((folder / 'history.json').read_text(encoding='utf-8'))
    assert [e['epoch'] for e in history['epochs']] == [1, 2, 3] and history['device'] == 'cpu'
    assert_carried(last_state(tmp_path / 'out'), last_state(tmp_path / 'ref'), stopped)


def test_cpu_run_resumes_on_the_accelerator_with_one_warning(on_device, run_main, tmp_path, monkeypatch):
    args = ('--setting', 'best', '--epochs', '3')
    assert run_main('MNIST_train.py', *args, '--device', 'cpu', out=tmp_path / 'ref').returncode == 0
    with monkeypatch.context() as patch:
        ctrl_c_at_epoch(3, patch)
        assert run_main('MNIST_train.py', *args, '--device', 'cpu').returncode == 130
    stopped = last_state(tmp_path / 'out')
    resumed = on_device('MNIST_train', *args, '--resume')
    assert resumed.returncode == 0, resumed.stderr
    folder = tmp_path / 'out' / 'setting_best'
    assert (
        resumed.stderr.strip()
        == f'warning: {folder} continues on {on_device.device} after training on cpu: not bit-exact'
    )
    history = json.loads((folder / 'history.json').read_text(encoding='utf-8'))
    assert [e['epoch'] for e in history['epochs']] == [1, 2, 3] and history['device'].startswith(on_device.device)
    assert_carried(last_state(tmp_path / 'out'), last_state(tmp_path / 'ref'), stopped)


def test_accelerator_resumes_on_the_accelerator_exactly(on_device, tmp_path):
    """The best recipe draws its warps from the accelerator's generator: resuming there restores it."""
    args = ('--setting', 'best', '--epochs', '3')
    assert on_device('MNIST_train', *args, out=tmp_path / 'ref').returncode == 0
    assert on_device('MNIST_train', *args, setup=STOP_AT_EPOCH_3).returncode == 130
    resumed = on_device('MNIST_train', *args, '--resume')
    assert resumed.returncode == 0 and resumed.stderr == '', resumed.stderr
    assert history_without_times(tmp_path / 'out', 'best') == history_without_times(tmp_path / 'ref', 'best')
