import os
import shutil
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
posix_signals = pytest.mark.skipif(
    sys.platform == 'win32', reason='sends SIGINT or SIGKILL to a process: not on Windows'
)


def pytest_collection_modifyitems(items):
    """The slow tests first: handed out one at a time to the cores, they do not leave one core working alone at
    the end."""
    items.sort(key=lambda item: item.get_closest_marker('slow') is None)


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
    from tests.idx import write_mnist  # here, as torch: pytest's controlling process needs none of it

    write_mnist(tmp_path / 'data' / 'MNIST' / 'raw')
    return tmp_path / 'data'


@pytest.fixture
def big_data(tmp_path):
    """Enough synthetic images that an epoch takes a noticeable fraction of a second."""
    from tests.idx import write_mnist

    write_mnist(tmp_path / 'big' / 'MNIST' / 'raw', n_train=15_000, n_test=100)
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
def run_main(tmp_path, data_dir, capsys, monkeypatch):
    """Run one of the scripts in this process, as its command line does (cli.run_script around main, the exit
    status, standard output and error), without the seconds of start-up and torch import that a new Python costs.
    For the tests where no signal, pipe or process boundary is what they test."""

    import cli
    import MNIST_evaluation  # here, not at the top: pytest's controlling process needs none of them
    import MNIST_train
    from slurm import sweep

    def run(script, *args, data=data_dir, out=tmp_path / 'out'):
        scripts = {'MNIST_train.py': MNIST_train, 'MNIST_evaluation.py': MNIST_evaluation, 'slurm/sweep.py': sweep}
        main = scripts[script].main
        argv = [*map(str, args), '--data-dir', str(data), '--out-dir', str(out)]
        monkeypatch.chdir(tmp_path)  # where cli runs the scripts
        capsys.readouterr()
        try:
            code = cli.run_script(lambda: main(argv))
        except SystemExit as e:
            code = e.code
            if isinstance(code, str):  # as Python ends a process: the message to standard error, status 1
                print(code, file=sys.stderr)
                code = 1
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, captured.out, captured.err)

    return run


@pytest.fixture(scope='session')
def trained_once(tmp_path_factory):
    """Settings 1, 2 and 5 trained for one epoch on the small synthetic data, once for the whole test run."""
    import MNIST_train
    from tests.idx import write_mnist

    root = tmp_path_factory.mktemp('trained')
    write_mnist(root / 'data' / 'MNIST' / 'raw')
    for name in ('1', '2', '5'):
        args = ['--setting', name, '--epochs', '1', '--device', 'cpu', '--data-dir', str(root / 'data')]
        assert MNIST_train.main([*args, '--out-dir', str(root / 'out')]) == 0
    return root / 'out'


@pytest.fixture
def trained(trained_once, tmp_path, data_dir):
    """A copy of those trained settings in tmp_path/out, for a test to damage or evaluate."""
    shutil.copytree(trained_once, tmp_path / 'out')
    return tmp_path / 'out'


@pytest.fixture
def harness(tmp_path, data_dir):
    """Run MNIST_train.py or MNIST_evaluation.py as their command line does, in a subprocess, after `setup` code
    (to inject a fault)."""

    def run(script, setup, *args, data=data_dir, out=tmp_path / 'out', **kwargs):
        code = (
            f'import sys\n{setup}\nimport {script}, cli\n'
            f'sys.exit(cli.run_script(lambda: {script}.main(sys.argv[1:]), trains={script == "MNIST_train"}))'
        )
        cmd = [sys.executable, '-c', code, *map(str, args), '--data-dir', str(data), '--out-dir', str(out)]
        env = script_env(PYTHONPATH=ROOT)
        return subprocess.run(cmd, capture_output=True, encoding='utf-8', timeout=300, cwd=tmp_path, env=env, **kwargs)

    return run
