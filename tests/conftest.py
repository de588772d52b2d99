import os
import signal
import subprocess
import sys

import pytest

from tests.idx import write_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
posix_signals = pytest.mark.skipif(
    sys.platform == 'win32', reason='sends SIGINT or SIGKILL to a process, or reads /proc: not on Windows'
)

# The tests send real Ctrl-Cs (SIGINT) to the processes they start. A shell starts background jobs with
# SIGINT ignored, and children inherit that; a handler here is not inherited, so they get the default back.
signal.signal(signal.SIGINT, signal.default_int_handler)


def script_env(**extra):
    """The environment of a script that a test starts: the test's, with the script's output in UTF-8 and
    unbuffered, so that the test reads each line as it comes."""
    return {**os.environ, 'PYTHONIOENCODING': 'utf-8', 'PYTHONUNBUFFERED': '1', **extra}


@pytest.fixture(params=['fork', 'spawn'])
def start_method(request, monkeypatch):
    """--jobs forks its workers on Linux CPUs and spawns them elsewhere (Windows, macOS, CUDA): each test that
    takes this fixture runs both ways."""
    if request.param == 'fork' and sys.platform != 'linux':
        pytest.skip('workers are forked on Linux only')
    monkeypatch.setenv('MNIST_START_METHOD', request.param)
    return request.param


@pytest.fixture
def data_dir(tmp_path):
    """A data folder holding small synthetic MNIST raw files (600 training, 200 test images)."""
    write_mnist(tmp_path / 'data' / 'MNIST' / 'raw')
    return tmp_path / 'data'


@pytest.fixture
def big_data(tmp_path):
    """Enough synthetic images that an epoch takes a noticeable fraction of a second."""
    write_mnist(tmp_path / 'big' / 'MNIST' / 'raw', n_train=30_000, n_test=100)
    return tmp_path / 'big'


@pytest.fixture
def cli(tmp_path, data_dir):
    """Run one of the scripts as a user would, on the synthetic data, writing into tmp_path/out."""

    def run(script, *args, data=data_dir, out=tmp_path / 'out', timeout=300, **kwargs):
        cmd = [sys.executable, os.path.join(ROOT, script), *map(str, args), '--data-dir', str(data)]
        options = {'capture_output': True, 'env': script_env(), **kwargs}
        return subprocess.run([*cmd, '--out-dir', str(out)], encoding='utf-8', timeout=timeout, cwd=tmp_path, **options)

    return run


@pytest.fixture
def harness(tmp_path, data_dir):
    """Run MNIST_train.py or MNIST_evaluation.py as their command line does, in a subprocess, after `setup` code
    (to inject a fault)."""

    def run(script, setup, *args, data=data_dir, out=tmp_path / 'out', **kwargs):
        code = (
            f'import sys\n{setup}\nimport {script}, runs\n'
            f'sys.exit(runs.run_script(lambda: {script}.main(sys.argv[1:])))'
        )
        cmd = [sys.executable, '-c', code, *map(str, args), '--data-dir', str(data), '--out-dir', str(out)]
        env = script_env(PYTHONPATH=ROOT)
        return subprocess.run(cmd, capture_output=True, encoding='utf-8', timeout=300, cwd=tmp_path, env=env, **kwargs)

    return run
