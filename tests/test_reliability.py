import concurrent.futures
import csv
import errno
import glob
import io
import json
import math
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import atomic
import MNIST_evaluation
import MNIST_train
import runs
from MNIST_model import RAW_FILES
from tests.conftest import ROOT, posix_signals, script_env
from tests.idx import write_idx, write_mnist


def history_without_times(out, name='2'):
    epochs = json.loads((out / f'setting_{name}' / 'history.json').read_text(encoding='utf-8'))['epochs']
    return [{k: v for k, v in e.items() if k != 'seconds'} for e in epochs]


def best_state(out, name='2'):
    (path,) = (out / f'setting_{name}').glob('epoch_*.pth')
    return os.path.basename(path), torch.load(path, weights_only=True)['model_state_dict']


def assert_same_state(a, b):
    assert a[0] == b[0] and a[1].keys() == b[1].keys()
    assert all(torch.equal(a[1][k], b[1][k]) if torch.is_tensor(a[1][k]) else a[1][k] == b[1][k] for k in a[1])


def assert_clean_error(result, *phrases):
    assert result.returncode not in (0, None), result.stdout
    assert 'Traceback' not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def evaluated(out):
    """What the report says of a run: each row's early-stopping epoch and test accuracy."""
    with open(out / 'report.csv', encoding='utf-8-sig', newline='') as f:
        return [(row['Setting'], row['Early stopping epoch'], row['Accuracy']) for row in csv.DictReader(f)]


@pytest.fixture(scope='session')
def reference(tmp_path_factory, worker_id):
    """Big synthetic data, and Setting 2 trained on it for 5 epochs without interruption, then evaluated: the
    history, best checkpoint and test accuracy that every interrupted and resumed run must end with. Made once
    for all of pytest-xdist's workers, in the folder they share."""
    import fcntl  # these tests send POSIX signals

    shared = tmp_path_factory.getbasetemp() if worker_id == 'master' else tmp_path_factory.getbasetemp().parent
    data, out = shared / 'reference' / 'big', shared / 'reference' / 'ref'
    with open(shared / 'reference.lock', 'wb') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker makes it while the others wait
        if not (out / 'report.csv').exists():
            write_mnist(data / 'MNIST' / 'raw', n_train=15_000, n_test=100)
            args = ['--device', 'cpu', '--data-dir', str(data), '--out-dir', str(out)]
            assert MNIST_train.main(['--setting', '2', '--epochs', '5', *args]) == 0
            assert MNIST_evaluation.main(args) == 0
    return data, (history_without_times(out), best_state(out), evaluated(out))


def interrupt_after_epoch(data, out, sig, epoch=2):
    """Start training in a subprocess and send it `sig` once `epoch` epochs are finished."""
    cmd = [sys.executable, os.path.join(ROOT, 'MNIST_train.py'), *'--setting 2 --epochs 5 --device cpu'.split()]
    cmd += ['--data-dir', str(data), '--out-dir', str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding='utf-8', env=script_env())
    for line in proc.stdout:
        if f'epoch   {epoch}/5' in line:
            proc.send_signal(sig)
            break
    out_text, err = proc.communicate(timeout=120)
    return proc.returncode, err


def resume(data, out):
    return MNIST_train.main(
        [
            *'--setting 2 --epochs 5 --device cpu --resume --data-dir'.split(),
            str(data),
            '--out-dir',
            str(out),
        ]
    )


@pytest.mark.slow
@posix_signals
def test_resume_after_sigkill_gives_the_same_run(reference, tmp_path):
    data, expected = reference
    code, _ = interrupt_after_epoch(data, tmp_path / 'out', signal.SIGKILL)
    assert code == -signal.SIGKILL
    done = len(history_without_times(tmp_path / 'out'))
    assert 2 <= done < 5  # killed mid-run, after finished epochs
    assert resume(data, tmp_path / 'out') == 0
    assert history_without_times(tmp_path / 'out') == expected[0]
    assert_same_state(best_state(tmp_path / 'out'), expected[1])


@pytest.mark.slow
@posix_signals
@pytest.mark.parametrize('sig', ['SIGINT', 'SIGTERM'])
def test_ctrl_c_or_sigterm_saves_and_says_how_to_resume(reference, tmp_path, sig, run_main):
    """Ctrl-C, or SIGTERM from kill, timeout or a scheduler's time limit: exit status 128 + the signal's number,
    and a resume command, also for a folder name with a space and brackets, that a shell runs as printed."""
    data, expected = reference
    out = tmp_path / 'runs [v2]' / 'a b'
    code, err = interrupt_after_epoch(data, out, getattr(signal, sig))
    assert code == 128 + getattr(signal, sig) and 'Traceback' not in err
    assert 'Interrupted; finished epochs are saved. Continue with: python MNIST_train.py --setting 2' in err
    assert err.strip().endswith('--resume')
    if sig == 'SIGINT':  # the command as printed, through a shell
        command = err.strip().split('Continue with: ')[1]
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']  # `python` is this test's Python
        resumed = subprocess.run(command, shell=True, cwd=ROOT, env=script_env(PATH=path), capture_output=True)
        assert resumed.returncode == 0, resumed.stderr
    else:
        assert resume(data, out) == 0
    assert history_without_times(out) == expected[0]
    assert_same_state(best_state(out), expected[1])
    assert run_main('MNIST_evaluation.py', '--device', 'cpu', data=data, out=out).returncode == 0
    assert evaluated(out) == expected[2]


@posix_signals
def test_a_run_started_in_the_background_stops_on_sigint(data_dir, tmp_path):
    """A shell without job control (a script, sh -c) starts `cmd &` with SIGINT ignored; kill -INT stops the run all
    the same, as Ctrl-C does."""
    cmd = [sys.executable, os.path.join(ROOT, 'MNIST_train.py'), *'--setting 2 --epochs 1000 --device cpu'.split()]
    cmd += ['--data-dir', str(data_dir), '--out-dir', str(tmp_path / 'out')]
    shell = subprocess.Popen(
        ['sh', '-c', '"$@" & echo $!; wait $!', 'sh', *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding='utf-8',
        env=script_env(),
    )
    trainer = int(shell.stdout.readline())
    assert 'epoch   1/1000' in shell.stdout.readline()
    os.kill(trainer, signal.SIGINT)
    try:
        _, err = shell.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(trainer, signal.SIGKILL)  # it trains on, deaf to SIGINT
        raise
    assert shell.returncode == 130 and 'Interrupted; finished epochs are saved' in err, err


KILL_AT_RENAME = """
import os, signal
real_replace, renames = os.replace, []
def replace(src, dst):
    renames.append(dst)
    if {when}:
        os.kill(os.getpid(), signal.SIGKILL)  # the new file is written to its temp file, not yet in place
    real_replace(src, dst)
os.replace = replace
"""


@pytest.mark.slow
@posix_signals
def test_kill_during_a_checkpoint_write_loses_nothing(harness, run_main, tmp_path):
    args = ('--setting', '2', '--epochs', '5', '--device', 'cpu')
    assert run_main('MNIST_train.py', *args, out=tmp_path / 'ref').returncode == 0
    killed = harness(
        'MNIST_train', KILL_AT_RENAME.format(when="dst.endswith('last.pth') and renames.count(dst) == 3"), *args
    )
    assert killed.returncode == -signal.SIGKILL
    folder = tmp_path / 'out' / 'setting_2'
    assert torch.load(folder / 'last.pth', weights_only=True)['epoch'] == 2  # the old state is intact
    best = json.loads((folder / 'history.json').read_text(encoding='utf-8'))['best_epoch']
    assert (folder / f'epoch_{best}.pth').exists()  # the checkpoint that the history names, whatever came after
    assert run_main('MNIST_train.py', *args, '--resume').returncode == 0
    assert not glob.glob(str(folder / '*.tmp'))
    assert history_without_times(tmp_path / 'out') == history_without_times(tmp_path / 'ref')
    assert_same_state(best_state(tmp_path / 'out'), best_state(tmp_path / 'ref'))


def test_existing_results_are_not_overwritten(run_main, tmp_path):
    assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '2').returncode == 0
    folder = tmp_path / 'out' / 'setting_2'
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    again = run_main('MNIST_train.py', '--setting', '2', '--epochs', '2')
    assert_clean_error(again, 'already holds results', '--resume', '--force')
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    forced = run_main('MNIST_train.py', '--setting', '2', '--epochs', '1', '--force')
    assert forced.returncode == 0
    assert len(json.loads((folder / 'history.json').read_text(encoding='utf-8'))['epochs']) == 1


def test_a_run_stopped_in_its_first_epoch_is_started_again_by_the_same_command(run_main, tmp_path, monkeypatch):
    """It finished no epoch, so nothing of it is kept: no --resume or --force is needed to train it."""
    with monkeypatch.context() as patch:
        ctrl_c_at_epoch(1, patch)
        assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '2').returncode == 130
    evaluated = run_main('MNIST_evaluation.py', '--setting', '2')
    assert_clean_error(evaluated, 'has finished an epoch yet; the lines above say where each stands')
    assert (
        'Setting 2: trained 0 of 2 epochs; continue with: python MNIST_train.py --setting 2 --epochs 2'
        in evaluated.stdout
    )
    again = run_main('MNIST_train.py', '--setting', '2', '--epochs', '1')
    assert again.returncode == 0, again.stderr
    history_file = tmp_path / 'out' / 'setting_2' / 'history.json'
    history = json.loads(history_file.read_text(encoding='utf-8'))
    assert [e['epoch'] for e in history['epochs']] == [1] and history['hyperparameters']['epochs'] == 1
    history_file.write_text(json.dumps({**history, 'epochs': [], 'best_epoch': 0}), encoding='utf-8')  # as it starts
    assert_clean_error(run_main('MNIST_train.py', '--setting', '2', '--epochs', '1'), 'already holds results')


def snapshot(folder):
    """Every file under `folder` that a run wrote (not the locks), with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob('*') if p.is_file() and p.name != '.lock'
    }


def test_force_deletes_only_the_runs_that_the_command_trains(run_main, tmp_path):
    """A job array task resubmitted with --force starts its own run over, and leaves its siblings' runs alone."""
    setting = tmp_path / 'out' / 'setting_2'
    assert run_main('MNIST_train.py', '--setting', '2', '--seeds', '3', '--epochs', '1').returncode == 0
    siblings = {k: v for k, v in snapshot(setting).items() if not k.startswith('seed_1/')}
    forced = run_main('MNIST_train.py', '--setting', '2', '--seeds', '3', '--epochs', '2', '--task', '1', '--force')
    assert forced.returncode == 0, forced.stderr
    assert {k: v for k, v in snapshot(setting).items() if not k.startswith('seed_1/')} == siblings
    history = json.loads((setting / 'seed_1' / 'history.json').read_text(encoding='utf-8'))
    assert history['seed'] == 1 and len(history['epochs']) == 2


def test_force_deletes_nothing_where_the_command_cannot_train(run_main, tmp_path):
    """--force with a mistyped --data-dir, or beside a run that another process writes, refuses before it deletes."""
    out = tmp_path / 'out'
    assert run_main('MNIST_train.py', '--setting', 'all', '--epochs', '1').returncode == 0
    before = snapshot(out)
    refused = run_main('MNIST_train.py', '--setting', 'all', '--epochs', '1', '--force', data=tmp_path / 'datset')
    assert_clean_error(refused, 'MNIST is not in')
    assert snapshot(out) == before

    with runs.lock(str(out / 'setting_3')):
        refused = run_main('MNIST_train.py', '--setting', 'all', '--epochs', '1', '--force')
    assert_clean_error(refused, f'another command holds {out / "setting_3"}, training it or waiting to')
    assert snapshot(out) == before


def test_resume_refuses_a_run_that_kept_only_its_best_checkpoint(run_main, tmp_path):
    """A best checkpoint without its history (copied from another machine, say) is refused in one sentence, whose
    command then trains the run again without another refusal."""
    folder = tmp_path / 'out' / 'setting_2'
    assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '2').returncode == 0
    (folder / 'last.pth').unlink()
    (folder / 'history.json').unlink()
    before = snapshot(folder)
    refused = run_main('MNIST_train.py', '--setting', '2', '--epochs', '2', '--resume')
    problem = f'{folder} holds epoch_2.pth without the history.json and last.pth of its run; train it again with: '
    assert_clean_error(refused, problem)
    assert snapshot(folder) == before and refused.stderr.count('\n') == 1
    evaluated = run_main('MNIST_evaluation.py')  # and the evaluation names the run it cannot read
    assert evaluated.returncode == 1 and f'Setting 2: skipped: {problem}' in evaluated.stderr
    command = shlex.split(evaluated.stderr.split('train it again with: ')[1].splitlines()[0])
    assert command[:2] == ['python', 'MNIST_train.py'] and run_main(*command[1:]).returncode == 0
    assert run_main('MNIST_evaluation.py').returncode == 0


def test_a_run_copied_in_under_another_settings_name_is_named_as_such(run_main, trained):
    shutil.copytree(trained / 'setting_2', trained / 'setting_7')
    problem = f'{trained / "setting_7"} holds the run of Setting 2, copied or moved here: move it back to keep it; '
    problem += 'train it again with: '
    assert_clean_error(run_main('MNIST_train.py', '--setting', '7', '--epochs', '1', '--resume'), problem)
    evaluated = run_main('MNIST_evaluation.py')
    assert evaluated.returncode == 1 and f'Setting 7: skipped: {problem}' in evaluated.stderr
    command = shlex.split(evaluated.stderr.split('train it again with: ')[1].splitlines()[0])
    assert command[:2] == ['python', 'MNIST_train.py'] and run_main(*command[1:]).returncode == 0
    assert 'Setting 7: accuracy of the 1 epoch trained model' in run_main('MNIST_evaluation.py').stdout


def test_a_seeds_run_copied_in_as_another_seed_is_not_counted_twice(run_main, tmp_path):
    assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '1', '--seeds', '1').returncode == 0
    seeds = tmp_path / 'out' / 'setting_2'
    shutil.copytree(seeds / 'seed_0', seeds / 'seed_1')
    evaluated = run_main('MNIST_evaluation.py', '--setting', '2')
    problem = f'Setting 2 seed 1: skipped: {seeds / "seed_1"} holds the run of Setting 2 seed 0, copied or moved here'
    assert evaluated.returncode == 1 and problem in evaluated.stderr
    assert '(2 seeds)' not in (tmp_path / 'out' / 'report.md').read_text(encoding='utf-8')


def test_seeds_are_not_trained_beside_a_settings_own_run_unless_told(run_main, tmp_path):
    setting = tmp_path / 'out' / 'setting_2'
    assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '1').returncode == 0
    before = snapshot(setting)
    for extra in ([], ['--resume'], ['--task', '1', '--force']):
        refused = run_main('MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '1', *extra)
        over = 'start the setting over with: python MNIST_train.py --setting 2 --epochs 1 --seeds 2 --force'
        assert_clean_error(refused, f'{setting} holds a run without --seeds; to train seeds instead, {over}')
        assert refused.stderr.count('\n') == 1 and snapshot(setting) == before
    assert run_main('MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '1', '--force').returncode == 0
    evaluated = run_main('MNIST_evaluation.py')
    lines = [line.split(':')[0] for line in evaluated.stdout.splitlines() if 'accuracy of the' in line]
    assert lines == ['Setting 2 seed 0', 'Setting 2 seed 1'] and not (setting / 'history.json').exists()


def test_a_settings_own_run_and_its_seeds_started_together_do_not_both_train(run_main, tmp_path):
    """Each command checks the other's folder after locking its own, so the second to lock is refused, also while the
    first has written nothing yet (here the other command's lock, held from its first moment)."""
    setting = tmp_path / 'out' / 'setting_2'
    with runs.lock(setting):
        refused = run_main('MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '1')
        assert_clean_error(refused, f'{setting} holds a run without --seeds')
    with runs.lock(setting / 'seed_1'):
        refused = run_main('MNIST_train.py', '--setting', '2', '--epochs', '1')
        assert_clean_error(refused, f'{setting} holds runs of several seeds')
    assert not [p for p in setting.rglob('*') if p.is_file() and p.name != '.lock']


def test_resume_never_restarts_a_run_that_has_results(run_main, tmp_path):
    assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '2').returncode == 0
    folder = tmp_path / 'out' / 'setting_2'
    (folder / 'last.pth').unlink()
    before = snapshot(folder)
    resumed = run_main('MNIST_train.py', '--setting', '2', '--epochs', '3', '--resume')
    again = 'python MNIST_train.py --setting 2 --epochs 3 --force'
    assert_clean_error(resumed, f'{folder / "last.pth"} is missing; train the run again with: {again}')
    assert resumed.stderr.rstrip().endswith(', or evaluate it as it is')
    assert resumed.stderr.count('\n') == 1 and snapshot(folder) == before
    evaluated = run_main('MNIST_evaluation.py')
    assert evaluated.returncode == 0 and 'Setting 2: accuracy of the' in evaluated.stdout, evaluated.stderr


@posix_signals
@pytest.mark.parametrize('k', [2, 3, 4])
def test_a_run_killed_as_it_saves_its_first_epoch_resumes_exactly(harness, run_main, tmp_path, k):
    """Killed before its best checkpoint (k=2), its state (3) or its history (4) is in place: --resume, which the
    evaluation prints, gives the uninterrupted run, whichever files the first epoch left."""
    args = ('--setting', '2', '--epochs', '2', '--device', 'cpu')
    assert run_main('MNIST_train.py', *args, out=tmp_path / 'ref').returncode == 0
    assert (
        harness('MNIST_train', KILL_AT_RENAME.format(when=f'len(renames) == {k}'), *args).returncode == -signal.SIGKILL
    )
    assert '--epochs 2 --resume' in run_main('MNIST_evaluation.py', '--device', 'cpu').stdout
    resumed = run_main('MNIST_train.py', *args, '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert history_without_times(tmp_path / 'out') == history_without_times(tmp_path / 'ref')
    assert_same_state(best_state(tmp_path / 'out'), best_state(tmp_path / 'ref'))


@pytest.mark.parametrize(
    'args, phrase',
    [
        (['--setting', '99'], "unknown setting '99'"),
        (['--setting', 'five'], "unknown setting 'five'"),
        (['--setting', '1', '--epochs', '0'], "'0' is not a whole number of at least 1"),
        (['--setting', '1', '--epochs', 'ten'], "'ten' is not a whole number"),
        (['--setting', '1', '--seed', '-1'], "'-1' is not a whole number of at least 0"),
        (['--setting', '1', '--seeds', '0'], "'0' is not a whole number of at least 1"),
        (['--setting', '1', '--jobs', '0'], "'0' is not a whole number of at least 1"),
        (['--setting', '1', '--device', 'tpu'], "unknown device 'tpu'"),
        (['--setting', '2', '--seeds', '3', '--task', '3'], '--task 3: these settings and seeds make runs 0 to 2'),
        (['--epochs', '3'], 'required: --setting'),
        (['--setting', '2', '--forc'], 'unrecognized arguments: --forc'),
        (['--setting', '2', '--seed', str(2**64)], f'{2**64} is too large'),
        (
            ['--setting', '2', '--seed', '5', '--seeds', '2'],
            'argument --seeds: not allowed with argument --seed',
        ),  # no abbreviation in a printed command
    ],
)
def test_bad_arguments(run_main, tmp_path, args, phrase):
    assert_clean_error(run_main('MNIST_train.py', *args), phrase)
    assert not (tmp_path / 'out').exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_cuda_without_a_gpu(run_main):
    assert_clean_error(run_main('MNIST_train.py', '--setting', '1', '--device', 'cuda'), 'no such device here')
    assert_clean_error(run_main('MNIST_evaluation.py', '--device', 'cuda'), 'no such device here')


def test_a_folder_that_cannot_be_locked_trains_after_one_warning(run_main, tmp_path, monkeypatch):
    fcntl = pytest.importorskip('fcntl', reason='Windows locks with msvcrt')

    def flock(fd, operation):  # as on a network folder without locks
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(fcntl, 'flock', flock)
    result = run_main('MNIST_train.py', '--setting', '2', '--epochs', '2', '--device', 'cpu')
    assert result.returncode == 0, result.stderr
    folder = tmp_path / 'out' / 'setting_2'
    assert result.stderr.count('warning') == 1 and f'warning: {folder} cannot be locked' in result.stderr
    assert len(json.loads((folder / 'history.json').read_text(encoding='utf-8'))['epochs']) == 2


def test_a_file_held_open_by_another_program_is_tried_again_then_named(run_main, trained, monkeypatch):
    real_replace, refused = os.replace, []

    def replace(src, dst):
        if str(dst).endswith('report.csv') and len(refused) < times:
            refused.append(dst)
            raise PermissionError(13, 'Permission denied')  # what Windows says while another program has dst open
        real_replace(src, dst)

    monkeypatch.setattr(os, 'replace', replace)
    report = trained / 'report.csv'
    times = 10**9
    elsewhere = run_main('MNIST_evaluation.py')  # where no open file stops a rename: named at once, as the system says
    assert_clean_error(elsewhere, f'error: cannot write {report}: Permission denied\n')
    assert len(refused) == 1 and not report.exists()
    refused.clear()
    monkeypatch.setattr(sys, 'platform', 'win32')  # where a file open in another program cannot be replaced
    times = 3  # a virus scanner reading it
    briefly = run_main('MNIST_evaluation.py')
    assert briefly.returncode == 0 and len(refused) == 3, briefly.stderr
    assert report.exists()
    report.unlink()
    times = 10**9  # open in Excel
    held = run_main('MNIST_evaluation.py')
    assert_clean_error(held, f'error: cannot write {report}: another program keeps it open; close that program')
    assert held.stderr.count('\n') == 1 and not report.exists() and not list(report.parent.glob('*.tmp'))


def test_missing_dataset_offline(run_main, tmp_path, monkeypatch):
    monkeypatch.setenv('http_proxy', 'http://127.0.0.1:9')
    monkeypatch.setenv('https_proxy', 'http://127.0.0.1:9')
    result = run_main('MNIST_train.py', '--setting', '1', data=tmp_path / 'empty')
    assert_clean_error(result, os.path.join(str(tmp_path / 'empty'), 'MNIST', 'raw'), *RAW_FILES)


@pytest.mark.parametrize('damage', ['magic', 'truncated', 'empty', 'label count'])
def test_damaged_idx_files(run_main, data_dir, damage):
    raw = data_dir / 'MNIST' / 'raw'
    images = raw / 'train-images-idx3-ubyte'
    data = images.read_bytes()
    if damage == 'magic':
        images.write_bytes(b'\x12\x34\x56\x78' + data[4:])
    elif damage == 'truncated':
        images.write_bytes(data[: len(data) // 2])
    elif damage == 'empty':
        images.write_bytes(b'')
    else:
        write_idx(raw / 'train-labels-idx1-ubyte', torch.zeros(10, dtype=torch.uint8))
    result = run_main('MNIST_train.py', '--setting', '1', '--epochs', '1')
    assert_clean_error(result, 'replace')
    assert 'train-' in result.stderr and str(raw) in result.stderr


class Exploit:
    def __reduce__(self):
        return os.system, ('touch pwned',)


def damage_checkpoint(path, kind):
    good = torch.load(path, weights_only=True)
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated':
        path.write_bytes(path.read_bytes()[:200])
    elif kind == 'cut short':  # where torch's reader, given the path, raises an OSError of its own, naming no file
        path.write_bytes(path.read_bytes()[:20_000])
    elif kind == 'foreign keys':
        torch.save({'weights': good['model_state_dict']}, path)
    elif kind == 'wrong shapes':
        torch.save(
            {
                **good,
                'model_state_dict': {
                    k: v[..., :3] if torch.is_tensor(v) and v.dim() else v for k, v in good['model_state_dict'].items()
                },
            },
            path,
        )
    elif kind == 'another epoch':
        torch.save({**good, 'epoch': 'one'}, path)
    else:
        path.write_bytes(pickle.dumps({'epoch': 1, 'model_state_dict': Exploit()}))


@pytest.mark.parametrize(
    'kind', ['empty', 'truncated', 'cut short', 'foreign keys', 'wrong shapes', 'another epoch', 'pickled code']
)
def test_damaged_checkpoint_is_skipped(run_main, trained, tmp_path, kind):
    (path,) = (trained / 'setting_1').glob('epoch_*.pth')
    damage_checkpoint(path, kind)
    result = run_main('MNIST_evaluation.py', '--device', 'cpu')
    assert_clean_error(result, 'Setting 1: skipped', str(path))
    assert 'Setting 2: accuracy of the 1 epoch trained model' in result.stdout
    assert '| Setting #2 |' in (trained / 'report.md').read_text(encoding='utf-8')
    assert not (tmp_path / 'pwned').exists()


def test_resume_refuses_a_checkpoint_with_code(run_main, trained):
    (trained / 'setting_2' / 'last.pth').write_bytes(pickle.dumps({'epoch': 1, 'x': Exploit()}))
    result = run_main('MNIST_train.py', '--setting', '2', '--epochs', '2', '--resume')
    assert_clean_error(result, 'refused', '--force')
    assert not (trained.parent / 'pwned').exists()


def test_resume_extends_a_finished_run_unless_its_schedule_spans_the_epochs(run_main, tmp_path):
    assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '1').returncode == 0
    assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '2', '--resume').returncode == 0
    history = json.loads((tmp_path / 'out' / 'setting_2' / 'history.json').read_text(encoding='utf-8'))
    assert [e['epoch'] for e in history['epochs']] == [1, 2] and history['hyperparameters']['epochs'] == 2
    assert run_main('MNIST_train.py', '--setting', 'best', '--epochs', '1').returncode == 0
    refused = run_main('MNIST_train.py', '--setting', 'best', '--epochs', '2', '--resume')
    assert_clean_error(refused, 'other epochs', '--force')


def test_a_resume_with_another_number_of_threads_says_it_is_not_bit_exact(run_main, tmp_path):
    """A run resumed on another share of the cores (another --jobs) adds its sums in another order: one line says
    so, and the history records the new number; resumed on the same, it says nothing."""
    args, threads = ('MNIST_train.py', '--setting', '2', '--device', 'cpu'), torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert run_main(*args, '--epochs', '1').returncode == 0
    finally:
        torch.set_num_threads(threads)
    resumed = run_main(*args, '--epochs', '2', '--resume')
    warning = f'continues with another number of CPU threads ({threads + 1} before, {threads} now): not bit-exact'
    assert resumed.returncode == 0 and resumed.stderr.count(warning) == 1, resumed.stderr
    history = json.loads((tmp_path / 'out' / 'setting_2' / 'history.json').read_text(encoding='utf-8'))
    assert history['threads'] == threads and len(history['epochs']) == 2
    again = run_main(*args, '--epochs', '3', '--resume')
    assert again.returncode == 0 and again.stderr == ''


def test_unwritable_output_folder(run_main, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder', encoding='utf-8')
    result = run_main('MNIST_train.py', '--setting', '1', out=blocker / 'out')
    assert_clean_error(result, 'cannot create', str(blocker))
    assert blocker.read_text(encoding='utf-8') == 'not a folder'


def test_divergence_stops_the_setting_and_keeps_the_best(run_main, tmp_path, monkeypatch):
    real_train, epochs = MNIST_train.train, []

    def train(*args):
        epochs.append(1)
        return math.nan if len(epochs) == 3 else real_train(*args)

    monkeypatch.setattr(MNIST_train, 'train', train)
    result = run_main('MNIST_train.py', '--setting', '2', '--epochs', '5', '--device', 'cpu')
    assert_clean_error(result, 'diverged at epoch 3', 'keeping the best checkpoint')
    folder = tmp_path / 'out' / 'setting_2'
    assert [p.name for p in folder.glob('epoch_*.pth')] == ['epoch_2.pth']
    assert len(json.loads((folder / 'history.json').read_text(encoding='utf-8'))['epochs']) == 2
    evaluation = run_main('MNIST_evaluation.py')  # a result all the same, at its best epoch
    assert 'Setting 2: diverged at epoch 3 of 5; its best epoch, 2, is reported' in evaluation.stdout
    with open(tmp_path / 'out' / 'report.csv', encoding='utf-8-sig', newline='') as f:
        assert [row['Epoch'] for row in csv.DictReader(f)] == ['2 of 5']


def test_training_never_reads_the_test_split(data_dir, tmp_path):
    """Random bytes in place of the test files leave training's result unchanged."""

    def train_on(data, out):
        assert (
            MNIST_train.main(
                ['--setting', '2', '--epochs', '3', '--device', 'cpu', '--data-dir', str(data), '--out-dir', str(out)]
            )
            == 0
        )
        return best_state(out)

    first = train_on(data_dir, tmp_path / 'a')
    raw = data_dir / 'MNIST' / 'raw'
    write_idx(raw / 't10k-images-idx3-ubyte', torch.randint(0, 256, (200, 28, 28), dtype=torch.uint8))
    write_idx(raw / 't10k-labels-idx1-ubyte', torch.randint(0, 256, (200,), dtype=torch.uint8))
    assert_same_state(train_on(data_dir, tmp_path / 'b'), first)


def ctrl_c_at_epoch(epoch, patch):
    """Ctrl-C, as a KeyboardInterrupt raised in the training of the given epoch."""
    real_train, epochs = MNIST_train.train, []

    def train(*args):
        epochs.append(1)
        if len(epochs) == epoch:
            raise KeyboardInterrupt
        return real_train(*args)

    patch.setattr(MNIST_train, 'train', train)


def tensors(obj):
    if torch.is_tensor(obj):
        return [obj]
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
    return [t for value in values for t in tensors(value)]


def test_resume_state_holds_every_generator_and_checkpoints_hold_cpu_tensors(data_dir, tmp_path):
    args = ['--setting', 'best', '--epochs', '2', '--device', 'cpu', '--data-dir', str(data_dir)]
    assert MNIST_train.main([*args, '--out-dir', str(tmp_path)]) == 0
    state = torch.load(tmp_path / 'setting_best' / 'last.pth', weights_only=True)
    assert torch.equal(state['rng_state'], torch.get_rng_state())  # the generator as the run left it
    assert state['device_rng_state'] is None  # the CPU's is the only one a CPU run draws from
    (best,) = (tmp_path / 'setting_best').glob('epoch_*.pth')
    everything = tensors(state) + tensors(torch.load(best, weights_only=True))
    assert len(everything) > 10 and all(t.device.type == 'cpu' for t in everything)


@pytest.mark.parametrize(
    'device', ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='no GPU'))]
)
def test_resume_with_schedule_and_distortions(run_main, tmp_path, monkeypatch, device):
    """The 'best' recipe draws random numbers and schedules its learning rate: resuming restores both, the GPU's
    generator too, from which the warps draw there."""
    args = ('--setting', 'best', '--epochs', '4', '--device', device)
    assert run_main('MNIST_train.py', *args, out=tmp_path / 'ref').returncode == 0
    with monkeypatch.context() as patch:
        ctrl_c_at_epoch(3, patch)
        assert run_main('MNIST_train.py', *args).returncode == 130
    assert run_main('MNIST_train.py', *args, '--resume').returncode == 0
    assert history_without_times(tmp_path / 'out', 'best') == history_without_times(tmp_path / 'ref', 'best')
    assert_same_state(best_state(tmp_path / 'out', 'best'), best_state(tmp_path / 'ref', 'best'))


FILE_SIZE_LIMIT = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""


def test_a_file_is_written_whole_from_other_threads_too(tmp_path):
    """Programs that save from threads of their own (a window's, a web server's), where signals cannot be held: each
    save is whole and at once, also of one file from several threads, and while the main thread writes a set."""
    path = str(tmp_path / 'state.pth')

    def save(k):
        for _ in range(20):
            atomic.save_torch(path, {'weights': torch.full((1000,), k)})
            assert torch.load(path, weights_only=True)['weights'].unique().numel() == 1

    with atomic.together():
        atomic.save_csv(str(tmp_path / 'set.csv'), [[1]])
        with concurrent.futures.ThreadPoolExecutor(4) as threads:
            for saving in [threads.submit(save, k) for k in range(4)]:
                saving.result()
        assert os.listdir(tmp_path) == ['state.pth']  # the set waits for the end of its block
    assert sorted(os.listdir(tmp_path)) == ['set.csv', 'state.pth']


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == 'win32', reason='no file-size limit (resource) on Windows')
def test_full_disk_names_the_file_keeps_every_file_whole_and_resumes_exactly(harness, run_main, tmp_path):
    args = ('--setting', '2', '--epochs', '4', '--device', 'cpu')
    assert run_main('MNIST_train.py', *args, out=tmp_path / 'ref').returncode == 0
    folder = tmp_path / 'out' / 'setting_2'
    limit = (tmp_path / 'ref' / 'setting_2' / 'last.pth').stat().st_size - 1  # the final state no longer fits
    code = FILE_SIZE_LIMIT.format(limit=limit)
    full = harness('MNIST_train', code, *args)
    assert_clean_error(full, f'cannot write {folder / "last.pth"}: the file would pass the file-size limit', '--resume')
    assert full.stderr.count('\n') == 1  # one sentence
    state = torch.load(folder / 'last.pth', weights_only=True)  # the previous state, whole
    assert 1 <= state['epoch'] < 4 and not glob.glob(str(folder / '*.tmp'))
    assert json.loads((folder / 'history.json').read_text(encoding='utf-8'))['epochs'][-1]['epoch'] == state['epoch']
    assert run_main('MNIST_train.py', *args, '--resume').returncode == 0  # space freed: continue
    assert history_without_times(tmp_path / 'out') == history_without_times(tmp_path / 'ref')
    assert_same_state(best_state(tmp_path / 'out'), best_state(tmp_path / 'ref'))


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused_while_the_first_writes(big_data, tmp_path, run_main):
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'MNIST_train.py'),
        *'--setting 2 --epochs 1000 --device cpu --data-dir'.split(),
        str(big_data),
        '--out-dir',
        str(tmp_path / 'out'),
    ]
    first = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding='utf-8',
        env=script_env(),
    )
    assert 'epoch   1/1000' in first.stdout.readline()  # the first run is writing
    for extra in ([], ['--resume'], ['--force']):
        second = run_main('MNIST_train.py', '--setting', '2', '--epochs', '2', *extra, data=big_data)
        assert_clean_error(second, f'another command holds {tmp_path / "out" / "setting_2"}, training it or waiting to')
    assert first.poll() is None  # still training, undisturbed
    first.kill()
    first.communicate()
    again = run_main('MNIST_train.py', '--setting', '2', '--epochs', '1', '--force', data=big_data)
    assert again.returncode == 0  # no stale lock


def test_a_checkpoint_of_another_network_and_a_damaged_history_are_skipped(run_main, trained):
    (path,), (sigmoid,) = (trained / 'setting_1').glob('epoch_*.pth'), (trained / 'setting_5').glob('epoch_*.pth')
    path.write_bytes(sigmoid.read_bytes())  # Setting 5's sigmoid network, copied in as Setting 1's
    (trained / 'setting_5' / 'history.json').write_text('{"epochs": [', encoding='utf-8')
    result = run_main('MNIST_evaluation.py')
    assert_clean_error(
        result,
        f'Setting 1: skipped: {path} does not fit its run',
        "activation='sigmoid'",
        'history.json is damaged',
    )
    assert 'Setting 2: accuracy of the 1 epoch trained model' in result.stdout


def test_a_damaged_history_is_written_again_by_resume_as_the_evaluation_says(run_main, trained):
    """The history is also in the state after the last epoch: the evaluation names the damaged file and the way to
    mend it, which works, rather than a way to train what is trained."""
    path, cpu = trained / 'setting_2' / 'history.json', ('--setting', '2', '--device', 'cpu')
    epochs = json.loads(path.read_text(encoding='utf-8'))['epochs']
    path.write_text('{"epochs": [', encoding='utf-8')
    result = run_main('MNIST_evaluation.py', *cpu)
    mend = f'{path} is damaged (Expecting value: line 1 column 13 (char 12)); continue it with: python MNIST_train.py '
    mend += '--setting 2 --epochs 1 --resume'
    assert_clean_error(result, mend, 'could be evaluated')
    own = run_main('MNIST_evaluation.py', *cpu, '--image', 'seven.png')  # no network to read it with, and why
    assert_clean_error(own, mend, 'could be evaluated')
    assert 'train one first' not in result.stderr + own.stderr
    assert run_main('MNIST_train.py', *cpu, '--epochs', '1', '--resume').returncode == 0
    assert json.loads(path.read_text(encoding='utf-8'))['epochs'] == epochs
    assert run_main('MNIST_evaluation.py', *cpu).returncode == 0


HISTORY_DAMAGE = {
    'no best epoch': lambda h: h.pop('best_epoch'),
    'no learning rate': lambda h: h['hyperparameters'].pop('lr'),
    'an epoch without its validation loss': lambda h: h['epochs'][0].pop('val_loss'),
    'a training time in words': lambda h: h.update(training_time='twelve seconds'),
    'epochs numbered from 0': lambda h: h['epochs'][0].update(epoch=0),
    'more epochs than planned': lambda h: h['epochs'].append({**h['epochs'][0], 'epoch': 2}),
}


@pytest.mark.parametrize('damage', HISTORY_DAMAGE)
def test_a_history_that_lacks_a_key_or_does_not_add_up_is_skipped(run_main, trained, damage):
    path = trained / 'setting_1' / 'history.json'
    history = json.loads(path.read_text(encoding='utf-8'))
    HISTORY_DAMAGE[damage](history)
    path.write_text(json.dumps(history), encoding='utf-8')
    result = run_main('MNIST_evaluation.py', '--device', 'cpu')
    assert_clean_error(result, f'Setting 1: skipped: {path} is damaged (')
    assert result.stderr.count('\n') == 1
    assert 'Setting 2: accuracy of the 1 epoch trained model' in result.stdout


STATE_DAMAGE = {
    "an accelerator's random state in a CPU run": lambda s: s.update(device_rng_state=torch.get_rng_state()),
    'a random state of floats': lambda s: s.update(rng_state=torch.zeros(3)),
    'a history without its best epoch': lambda s: s['history'].pop('best_epoch'),
}


@pytest.mark.parametrize('damage', STATE_DAMAGE)
def test_resume_refuses_a_state_that_does_not_fit_with_one_sentence(run_main, trained, damage):
    path = trained / 'setting_2' / 'last.pth'
    state = torch.load(path, weights_only=True)
    STATE_DAMAGE[damage](state)
    torch.save(state, path)
    result = run_main('MNIST_train.py', '--setting', '2', '--epochs', '2', '--device', 'cpu', '--resume')
    assert_clean_error(result, f'cannot resume from {path}', '--force')
    assert result.stderr.count('\n') == 1


class ClosedOnWindows(io.RawIOBase):
    """A pipe whose reader is gone, as Windows reports it: EINVAL from the write, not EPIPE."""

    def __init__(self, fd):
        self.fd = fd

    def writable(self):
        return True

    def fileno(self):
        return self.fd

    def write(self, data):
        raise OSError(errno.EINVAL, 'Invalid argument')


def test_closed_output_pipe_ends_quietly(cli, run_main, trained, tmp_path, monkeypatch):
    read, write = os.pipe()
    os.close(read)  # the reader is gone, as after `| head -1`
    result = cli('MNIST_evaluation.py', stdout=write, capture_output=False, stderr=subprocess.PIPE)
    os.close(write)
    assert result.returncode == 1 and result.stderr == ''  # no BrokenPipeError traceback
    with open(tmp_path / 'pipe', 'wb') as pipe:
        monkeypatch.setattr(sys, 'stdout', io.TextIOWrapper(ClosedOnWindows(pipe.fileno()), encoding='utf-8'))
        on_windows = run_main('MNIST_evaluation.py')
    assert on_windows.returncode == 1 and on_windows.stderr == ''


CTRL_C_IN_EVALUATION = """
import signal, MNIST_evaluation
def data_load(*args, **kwargs):
    signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, while the test split is read
MNIST_evaluation.data_load = data_load
"""


def test_ctrl_c_in_evaluation(harness):
    result = harness('MNIST_evaluation', CTRL_C_IN_EVALUATION)
    assert result.returncode == 130 and result.stderr.strip() == 'Interrupted.'


REPORT_SET = ['report.md', 'report.csv', 'val_accuracy.png', 'learning_curves.png', 'confusion_matrix.csv']
REPORT_SET += ['confusion_matrix.png', 'mistakes.png']
SIGNAL_WHILE_DRAWING = """
import signal, matplotlib.figure
real_savefig, drawn = matplotlib.figure.Figure.savefig, []
def savefig(*args, **kwargs):
    drawn.append(1)
    if len(drawn) == 2:
        signal.raise_signal(signal.{sig})  # while the second picture is drawn
    return real_savefig(*args, **kwargs)
matplotlib.figure.Figure.savefig = savefig
"""
SIGNAL_BETWEEN_FILES = """
import os, signal
real_replace = os.replace
def replace(src, dst):
    real_replace(src, dst)
    os.replace = real_replace
    signal.raise_signal(signal.{sig})  # once the first file is in place
os.replace = replace
"""


@pytest.mark.parametrize(
    'moment, sig',
    [('drawing', 'SIGINT'), ('between files', 'SIGINT'), ('between files', 'SIGTERM')],
)
def test_an_interrupted_evaluation_leaves_the_old_report_or_the_new_one_whole(harness, trained, moment, sig):
    for name in REPORT_SET:
        (trained / name).write_bytes(b'the previous report')
    setup = SIGNAL_WHILE_DRAWING if moment == 'drawing' else SIGNAL_BETWEEN_FILES
    result = harness('MNIST_evaluation', setup.format(sig=sig), '--device', 'cpu')
    assert result.returncode == 128 + getattr(signal, sig) and 'Traceback' not in result.stderr, result.stderr
    old = {name for name in REPORT_SET if (trained / name).read_bytes() == b'the previous report'}
    assert old == (set(REPORT_SET) if moment == 'drawing' else set())  # the new report is written whole, or none
    assert not list(trained.glob('*.tmp'))


def test_data_dir_naming_a_file(run_main, tmp_path):
    (tmp_path / 'file').write_text('x', encoding='utf-8')
    assert_clean_error(run_main('MNIST_train.py', '--setting', '1', data=tmp_path / 'file'), 'is a file, not a folder')


def test_a_damaged_run_in_a_command_of_several_is_named_and_the_others_train(run_main, tmp_path, monkeypatch):
    """A truncated last.pth, or a row of Config edited since, stops that run alone: the others are continued, the
    command ends with status 1, and the advice, run as printed, starts that run over and touches no other."""
    out = tmp_path / 'out'
    assert run_main('MNIST_train.py', '--setting', 'all', '--epochs', '1').returncode == 0
    last = out / 'setting_3' / 'last.pth'
    last.write_bytes(last.read_bytes()[:300])
    monkeypatch.setitem(MNIST_train.Config.settings, 4, {**MNIST_train.Config.settings[4], 'lr': 1e-3})
    resumed = run_main('MNIST_train.py', '--setting', 'all', '--epochs', '2', '--resume')
    assert_clean_error(resumed, f'cannot resume from {last}', f'{out / "setting_4"} was trained with other')
    lines = resumed.stderr.splitlines()
    assert len(lines) == 2 and resumed.returncode == 1, lines
    for name in ('1', '2'):
        assert len(json.loads((out / f'setting_{name}' / 'history.json').read_text(encoding='utf-8'))['epochs']) == 2
    before = {name: snapshot(out / f'setting_{name}') for name in '124'}
    command = lines[0].split('; start it over with: ')[1]
    assert command.startswith('python MNIST_train.py --setting 3 --epochs 2 --force ')
    assert run_main(*shlex.split(command)[1:]).returncode == 0
    assert {name: snapshot(out / f'setting_{name}') for name in '124'} == before


def test_resume_with_fewer_epochs_than_trained_keeps_the_run_and_says_so(run_main, tmp_path):
    assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '2').returncode == 0
    before = snapshot(tmp_path / 'out')
    fewer = run_main('MNIST_train.py', '--setting', '2', '--epochs', '1', '--resume')
    assert_clean_error(fewer, f'{tmp_path / "out" / "setting_2"} trained 2 epochs, more than the 1 asked')
    assert fewer.stderr.count('\n') == 1 and snapshot(tmp_path / 'out') == before
    evaluated = run_main('MNIST_evaluation.py')
    assert evaluated.returncode == 0 and ' of 1' not in evaluated.stdout
    assert 'Setting 2: accuracy of the 2 epoch trained model' in evaluated.stdout


def test_an_untrained_setting_asked_for_is_named_beside_those_trained(run_main, trained):
    evaluated = run_main('MNIST_evaluation.py', '--setting', '4')
    assert_clean_error(
        evaluated, f'Setting 4 has no run in {trained}; train it first: python MNIST_train.py --setting 4'
    )
    assert 'no trained setting' not in evaluated.stderr


def test_a_checkpoint_whose_bytes_were_changed_is_damaged_not_read(run_main, trained):
    """torch's reader skips the checksums that a checkpoint holds: a changed byte would give a silently wrong
    accuracy."""
    (best,) = (trained / 'setting_2').glob('epoch_*.pth')
    data = bytearray(best.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b'\xff' * 64
    best.write_bytes(bytes(data))
    evaluated = run_main('MNIST_evaluation.py')
    assert_clean_error(evaluated, f'Setting 2: skipped: {best} is damaged: ', 'fails its checksum')
    assert 'Setting 2: accuracy' not in evaluated.stdout and 'Setting 1: accuracy' in evaluated.stdout


def test_an_evaluation_before_any_epoch_says_where_each_run_stands(run_main, tmp_path):
    """Runs waiting their turn or stopped in their first epoch: no advice to train what a command is training, nor a
    command that would drop their planned epochs."""
    out = tmp_path / 'out'
    with runs.lock(str(out / 'setting_1')), runs.lock(str(out / 'setting_2')):
        evaluated = run_main('MNIST_evaluation.py')
    assert_clean_error(evaluated, 'no run in', 'has finished an epoch yet; the lines above say where each stands')
    assert (
        'Setting 1: waiting its turn in a running command' in evaluated.stdout and 'train one' not in evaluated.stderr
    )
