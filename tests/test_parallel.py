"""Many runs at once: worker processes, the weight-decay sweep, device choice, results merged from many processes."""

import json
import os
import select
import signal
import subprocess
import sys

import pytest
import torch

from cli import command_line, parse_device
from MNIST_model import Config, setting
from tests.conftest import ROOT, script_env
from tests.test_reliability import history_without_times


@pytest.mark.slow
def test_jobs_train_every_run_with_their_share_of_the_cores(cli, run_main, tmp_path, start_method):
    result = cli('MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '2', '--jobs', '2', '--device', 'cpu')
    assert result.returncode == 0, result.stderr
    for seed in (0, 1):
        assert f'Setting 2 seed {seed} | epoch   2/2' in result.stdout
        history = json.loads(
            (tmp_path / 'out' / 'setting_2' / f'seed_{seed}' / 'history.json').read_text(encoding='utf-8')
        )
        assert history['seed'] == seed and history['threads'] == max(1, torch.get_num_threads() // 2)
    sequential = run_main(
        'MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '2', '--device', 'cpu', out=tmp_path / 'seq'
    )
    assert sequential.returncode == 0
    assert (
        json.loads((tmp_path / 'seq' / 'setting_2' / 'seed_0' / 'history.json').read_text(encoding='utf-8'))['threads']
        == torch.get_num_threads()
    )  # one run at a time uses every core
    for seed in (0, 1):  # the same runs, up to the order of floating-point sums
        parallel, alone = (history_without_times(tmp_path / out, f'2/seed_{seed}') for out in ('out', 'seq'))
        assert [e['train_loss'] for e in parallel] == pytest.approx([e['train_loss'] for e in alone], rel=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, 'pidfd_open'), reason='finds the workers in /proc and waits on pidfds: Linux only')
@pytest.mark.parametrize('sig', ['SIGINT', 'SIGTERM', 'SIGKILL'])
def test_a_stopped_jobs_run_leaves_no_worker_keeps_their_epochs_and_resumes(
    big_data, tmp_path, run_main, sig, start_method
):
    """Ctrl-C and SIGTERM: every worker stops and one resume command is printed. SIGKILL of the command, which
    leaves it no chance to stop them: each worker ends by itself."""
    sig = getattr(signal, sig)
    args = '--setting 2 --seeds 2 --epochs 1000 --jobs 2 --device cpu'.split()
    cmd = [sys.executable, os.path.join(ROOT, 'MNIST_train.py'), *args]
    cmd += ['--data-dir', str(big_data), '--out-dir', str(tmp_path / 'out')]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding='utf-8', env=script_env())
    started = set()
    for line in proc.stdout:
        started.add(line.split(' |')[0])
        if len(started) == 2:  # both workers have finished an epoch
            break
    workers = [pid for pid in children(proc.pid) if 'resource_tracker' not in cmdline(pid)]  # spawn's helper
    assert len(workers) == 2
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)  # returns once no process writes the output: every worker ended
        # After SIGKILL an orphan closes its pipes just before it exits, then waits as a zombie for init; else the
        # command that stopped the workers has reaped them
        stopped = [exited(pid) if sig == signal.SIGKILL else stat(pid) == [] for pid in workers]
    finally:
        for pid in workers:  # whatever the result, no stray worker outlives the test
            if stat(pid)[:1] not in ([], ['Z']):
                os.kill(int(pid), signal.SIGKILL)
    assert all(stopped)
    assert all(out.count(f'{label} |') <= 1 for label in started)  # no worker trained on past its epoch in flight
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + sig and 'Traceback' not in err, err
        assert err.count('Continue with:') == 1
        assert err.strip().endswith(
            f'Continue with: {command_line(["python", "MNIST_train.py", *cmd[2:], "--resume"])}'
        )
    done = []
    for seed in (0, 1):  # everything finished is kept
        folder = tmp_path / 'out' / 'setting_2' / f'seed_{seed}'
        done.append(len(json.loads((folder / 'history.json').read_text(encoding='utf-8'))['epochs']))
        assert done[-1] >= 1 and torch.load(folder / 'last.pth', weights_only=True)['epoch'] == done[-1]
    # What the stop left resumes every run (here one after another, in this process: no fork of the test's own)
    resumed = run_main(
        'MNIST_train.py', *args[:4], '--epochs', max(done) + 1, '--device', 'cpu', '--resume', data=big_data
    )
    assert resumed.returncode == 0, resumed.stderr
    for seed in (0, 1):
        assert len(history_without_times(tmp_path / 'out', f'2/seed_{seed}')) == max(done) + 1


@pytest.mark.skipif(not hasattr(os, 'pidfd_open'), reason='finds the workers in /proc: Linux only')
def test_a_worker_killed_by_the_system_is_named_in_one_sentence(big_data, tmp_path, run_main):
    """A worker killed from outside (the out-of-memory killer sends SIGKILL): the other trains on, then the command
    ends with one sentence that names the signal and how to continue, which works."""
    args = '--setting 2 --seeds 2 --epochs 3 --jobs 2 --device cpu'.split()
    cmd = [sys.executable, os.path.join(ROOT, 'MNIST_train.py'), *args]
    cmd += ['--data-dir', str(big_data), '--out-dir', str(tmp_path / 'out')]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding='utf-8', env=script_env())
    assert 'epoch   1/3' in proc.stdout.readline()
    (worker, _) = [pid for pid in children(proc.pid) if 'resource_tracker' not in cmdline(pid)]
    os.kill(int(worker), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and 'Traceback' not in err, err
    assert (
        err.strip()
        == 'error: 1 of 2 workers killed (SIGKILL); run the command again with --resume to continue their runs'
    )
    assert out.count('epoch   3/3') == 1  # the other worker trained its run to the end
    resumed = run_main('MNIST_train.py', *args[:6], '--device', 'cpu', '--resume', data=big_data)
    assert resumed.returncode == 0, resumed.stderr
    for seed in (0, 1):
        assert len(history_without_times(tmp_path / 'out', f'2/seed_{seed}')) == 3


def stat(pid):
    """The fields of /proc/PID/stat after the command's name (state, parent, ...), or [] once it is gone."""
    try:
        with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
            return f.read().rsplit(')', 1)[1].split()
    except OSError:
        return []


def exited(pid, seconds=30):
    """Whether a process (not a child of this one) has ended, waiting for it up to `seconds`."""
    try:
        fd = os.pidfd_open(int(pid))
    except ProcessLookupError:  # reaped already
        return True
    try:
        return bool(select.select([fd], [], [], seconds)[0])  # a process's pidfd is readable once it has ended
    finally:
        os.close(fd)


def children(parent):
    return [pid for pid in os.listdir('/proc') if pid.isdigit() and stat(pid)[1:2] == [str(parent)]]


def cmdline(pid):
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
        return f.read().decode(errors='replace')


@pytest.mark.skipif(torch.accelerator.is_available(), reason='this machine has an accelerator')
def test_device_auto_is_the_cpu_without_an_accelerator():
    assert parse_device('auto') == torch.device('cpu')


def test_weight_decay_sweep_rows():
    rows = {name: setting(name) for name in Config.groups['wd']}
    assert len(rows) == 15 and len({(h['optimizer'], h['weight_decay']) for h in rows.values()}) == 15
    rates = {'Adam': 1e-4, 'Adadelta': 0.1, 'AdamW': 1e-4}
    for h in rows.values():
        assert h['weight_decay'] in (0, 1e-5, 1e-4, 1e-3, 1e-2) and h['lr'] == rates[h['optimizer']]
        assert h['epochs'] == 100 and h['batch_size'] == 200


@pytest.mark.slow
def test_sweep_report_and_plot_merge_runs_written_by_separate_processes(tmp_path, data_dir, run_main):
    """Three processes, as three tasks of a cluster job array, write into one output folder at the same time."""
    names = ['Adam-0', 'Adam-0.01', 'AdamW-0.01']
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, 'MNIST_train.py'),
                '--setting',
                name,
                *'--seeds 2 --epochs 1 --device cpu --data-dir'.split(),
                str(data_dir),
                '--out-dir',
                str(tmp_path / 'out'),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in names
    ]
    for p in procs:
        p.communicate(timeout=300)  # reads and closes its pipes
    assert all(p.returncode == 0 for p in procs)
    result = run_main('MNIST_evaluation.py')
    assert result.returncode == 0, result.stderr
    report = (tmp_path / 'out' / 'report.md').read_text(encoding='utf-8')
    sweep = report.split('## Weight decay sweep')[1]
    assert '| λ | Adam | AdamW |' in sweep and '| 0.01 |' in sweep and '±' in sweep
    assert (tmp_path / 'out' / 'weight_decay.png').stat().st_size > 0
    assert all(f'Setting {name} seed {s}: accuracy' in result.stdout for name in names for s in (0, 1))
