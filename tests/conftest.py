import os
import signal
import subprocess
import sys

import pytest

from tests.idx import write_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tests send real Ctrl-Cs (SIGINT) to the processes they start. A shell starts background jobs with
# SIGINT ignored, and children inherit that; a handler here is not inherited, so they get the default back.
signal.signal(signal.SIGINT, signal.default_int_handler)


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
        cmd = [
            sys.executable,
            os.path.join(ROOT, script),
            *map(str, args),
            '--data-dir',
            str(data),
            '--out-dir',
            str(out),
        ]
        return subprocess.run(cmd, text=True, timeout=timeout, cwd=tmp_path, **{'capture_output': True, **kwargs})

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
        env = {**os.environ, 'PYTHONPATH': ROOT}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, **kwargs)

    return run
