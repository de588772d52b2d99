"""slurm/sweep.py: a sweep on a real one-node Slurm cluster, whose tasks are interrupted and continue by themselves,
and its bad input, caught before anything is submitted."""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import MNIST_evaluation
import MNIST_train
from tests.conftest import ROOT, script_env
from tests.test_reliability import assert_clean_error, assert_same_state, best_state, history_without_times

SWEEP = os.path.join(ROOT, 'slurm', 'sweep.py')
EPOCHS = 10  # 0.3 s each: time for the test to catch each trainer after its first, on a loaded machine too
ENDED = ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY')  # not COMPLETING, which ends
PROGRAMS = {'munged': 'munge', 'slurmctld': 'slurmctld', 'slurmd': 'slurmd', 'sbatch': 'slurm-client'}
CONF = """ClusterName=mnist
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it starts again (120 s by default)
AuthInfo=socket={folder}/munge.socket,cred_expire=5
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
NodeName=mnist NodeHostname={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(condition, what, every=0.2, seconds=300):
    """Poll every `every` seconds until condition() gives something true, and return it."""
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        assert time.monotonic() < deadline, f'{what} did not happen within {seconds} s'
        time.sleep(every)
    return result


@pytest.fixture
def slurm(tmp_path):
    """A one-node Slurm cluster in a folder of its own (munged, slurmctld and slurmd, with 2 CPUs), stopped by
    their process ids at the end. Yields the environment in which Slurm's commands use it."""
    missing = [package for program, package in PROGRAMS.items() if not shutil.which(program)]
    if missing:
        pytest.skip(f'Slurm is not installed (no {", ".join(missing)}): apt-get install slurm-wlm munge')
    if os.geteuid() != 0:
        pytest.skip('this one-node Slurm runs its jobs as root')
    folder = tmp_path / 'slurm'
    for sub in ('state', 'spool'):
        (folder / sub).mkdir(parents=True)
    key = folder / 'munge.key'
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    host = socket.gethostname().split('.')[0]
    conf = folder / 'slurm.conf'
    conf.write_text(CONF.format(host=host, ports=(free_port(), free_port()), folder=folder), encoding='utf-8')
    env = {**os.environ, 'SLURM_CONF': str(conf)}
    munge = [
        f'--{name}={folder}/munge.{name.split("-")[0]}' for name in ('socket', 'pid-file', 'log-file', 'seed-file')
    ]
    commands = [['munged', '-F', '--force', f'--key-file={key}', *munge], ['slurmctld', '-D', '-i']]
    commands += [['slurmd', '-D', '-N', 'mnist']]
    daemons = []
    try:
        for command in commands:
            with open(folder / f'{command[0]}.out', 'wb') as log:
                daemons.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        state = ['sinfo', '--noheader', '--format=%t']
        wait_for(
            lambda: subprocess.run(state, env=env, capture_output=True, encoding='utf-8').stdout == 'idle\n',
            'Slurm',
            seconds=60,
        )
        yield env
    finally:
        subprocess.run(['scancel', '--user=root'], env=env, capture_output=True)
        for daemon in reversed(daemons):
            daemon.terminate()
            daemon.wait(timeout=60)


def trainer(task, out):
    """The process id of the trainer of this array task, if it runs."""
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                command = f.read()
        except OSError:
            continue
        if b'MNIST_train.py\0' in command and f'--task\0{task}\0'.encode() in command and bytes(out) in command:
            return int(pid)
    return None


def term_pending(pid):
    """Whether SIGTERM waits to be delivered to a stopped process."""
    with open(f'/proc/{pid}/status', encoding='utf-8') as f:
        pending = re.search(r'^ShdPnd:\s*(\w+)', f.read(), re.M).group(1)
    return int(pending, 16) >> (signal.SIGTERM - 1) & 1


def jobs(ids, env):
    """What Slurm says of these jobs, as {field: value} for each (for each task of an array)."""
    lines = subprocess.run(
        ['scontrol', '--oneliner', 'show', 'job', ids], env=env, capture_output=True, encoding='utf-8'
    )
    return [dict(re.findall(r'(\w+)=(\S*)', line)) for line in lines.stdout.splitlines()]


@pytest.mark.slow
def test_a_sweep_on_slurm_continues_preempted_killed_and_timed_out_tasks_exactly(slurm, big_data, tmp_path):
    """Four runs, each stopped once in the middle of its run: requeued by Slurm (as for preemption or a lost node),
    its trainer killed with SIGKILL, Slurm's warning before the time limit, and a killed trainer whose saved state
    is damaged. The first three continue by themselves and end as the uninterrupted runs, bit for bit; the fourth
    fails. The evaluation starts once every task has ended and names the run that failed."""
    args = ['--setting', '2', '--seeds', '3', '--epochs', str(EPOCHS), '--data-dir', str(big_data)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a task with one core
    try:
        assert MNIST_train.main([*args, '--device', 'cpu', '--out-dir', str(tmp_path / 'ref')]) == 0
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            evaluate = ['--device', 'cpu', '--data-dir', str(big_data), '--out-dir', str(tmp_path / 'ref')]
            assert MNIST_evaluation.main(evaluate) == 0
        at_home = [line for line in printed.getvalue().splitlines() if ': accuracy of the' in line]
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / 'shared'
    env = script_env(**slurm, CUDA_VISIBLE_DEVICES='')  # the CPU, as the reference
    command = [sys.executable, SWEEP, *args, '--seeds', '4', '--cpus-per-task', '1', '--out-dir', str(out)]
    # The tasks are watched from the moment they are submitted, while the sweep's own process may still be ending
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding='utf-8')
    sweep = subprocess.Popen(command, env=env, cwd=tmp_path, **pipes)

    def array_task(pid):  # as Slurm names the trainer's task: ARRAY_TASK
        with open(f'/proc/{pid}/environ', 'rb') as f:
            variables = dict(v.split(b'=', 1) for v in f.read().split(b'\0') if b'=' in v)
        return f'{variables[b"SLURM_ARRAY_JOB_ID"].decode()}_{variables[b"SLURM_ARRAY_TASK_ID"].decode()}'

    def requeue(pid, task):
        subprocess.run(['scontrol', 'requeue', array_task(pid)], env=slurm, check=True)  # SIGCONT, SIGTERM

    def kill(pid, task):
        os.kill(pid, signal.SIGKILL)

    def time_limit_warning(pid, task):  # what --signal=B:USR1@120 sends 2 to 3 minutes before the time limit
        subprocess.run(['scancel', '--batch', '--signal=USR1', array_task(pid)], env=slurm, check=True)
        wait_for(lambda: term_pending(pid), 'the task script passing the warning on as SIGTERM', 0.005, 60)
        os.kill(pid, signal.SIGCONT)

    def damage_then_kill(pid, task):  # the trainer's last state unreadable: resuming it fails, and so does the task
        (out / 'setting_2' / f'seed_{task}' / 'last.pth').write_bytes(b'damaged')
        os.kill(pid, signal.SIGKILL)

    faults, finished = [requeue, kill, time_limit_warning, damage_then_kill], {}  # task: its epochs when stopped

    def epochs(task):  # that the trainer has finished; its history is written as it starts
        history = out / 'setting_2' / f'seed_{task}' / 'history.json'
        return len(json.loads(history.read_text(encoding='utf-8'))['epochs']) if history.exists() else 0

    def printed(task):  # the epoch lines in the task's log, which the trainer writes line by line
        return sum(
            log.read_text(encoding='utf-8').count('| epoch') for log in (out / 'logs').glob(f'train_*_{task}.log')
        )

    def stop_each_after_an_epoch():  # and apply its fault
        for task in [t for t in range(4) if t not in finished]:
            pid = trainer(task, out)
            if pid and epochs(task):
                os.kill(pid, signal.SIGSTOP)
                if printed(task) < epochs(task):  # stopped between saving an epoch and printing its line: not there
                    os.kill(pid, signal.SIGCONT)
                    continue
                finished[task] = epochs(task)
                faults[task](pid, task)
        return len(finished) == 4

    wait_for(stop_each_after_an_epoch, 'each trainer finishing an epoch', every=0.005)
    submitted, problems = sweep.communicate(timeout=120)
    assert sweep.returncode == 0, problems
    array, evaluation = re.search(r'job array (\d+),.*\nevaluation as job (\d+),', submitted).groups()
    assert all(1 <= n < EPOCHS for n in finished.values()), finished  # each stopped in the middle of its run
    wait_for(lambda: jobs(evaluation, slurm)[0]['JobState'] in ENDED, 'the end of the evaluation')

    logs = {t: (out / 'logs' / f'train_{array}_{t}.log').read_text(encoding='utf-8') for t in range(4)}
    tasks = sorted(jobs(array, slurm), key=lambda t: int(t['ArrayTaskId']))
    states = [(t['JobState'], t['ExitCode'], t['Restarts']) for t in tasks]
    assert states == [('COMPLETED', '0:0', '1')] * 3 + [('FAILED', '1:0', '1')], logs
    unlike = {t: logs[t] for t in range(3) if logs[t].count(' starts on ') != 2 or logs[t].count('| epoch') != EPOCHS}
    assert not unlike, unlike
    assert f'error: cannot resume from {out / "setting_2" / "seed_3" / "last.pth"}' in logs[3]
    assert all('requeueing the task' in logs[t] for t in (1, 2))  # the task requeued itself
    (report,) = jobs(evaluation, slurm)
    # the evaluation ends with status 1, as a run could not be read: the one whose state was damaged
    assert (report['JobState'], report['ExitCode']) == ('FAILED', '1:0') and report['StartTime'] >= max(
        t['EndTime'] for t in tasks
    )
    for seed in range(3):
        run = f'2/seed_{seed}'
        assert history_without_times(out, run) == history_without_times(tmp_path / 'ref', run)
        assert_same_state(best_state(out, run), best_state(tmp_path / 'ref', run))
    printed = (out / 'logs' / f'evaluate_{evaluation}.log').read_text(encoding='utf-8')
    assert len(at_home) == 3 and all(line in printed for line in at_home)  # the three seeds as evaluated at home
    report = (out / 'report.md').read_text(encoding='utf-8')  # and the failed one named
    damaged = f'- Setting 2 seed 3: skipped: {out / "setting_2" / "seed_3" / "last.pth"} is damaged'
    again = f'train it again with: python MNIST_train.py --setting 2 --epochs {EPOCHS} --seeds 4 --task 3 --force'
    assert damaged in report and again in report, report
    assert f'| Setting #2 | 200 | ReLU | 4 | 200 | {EPOCHS} |' in report  # the three seeds that finished


@pytest.fixture
def sbatch(tmp_path, monkeypatch):
    """A stand-in for sbatch on the PATH, which notes each submission in a file and answers with a job id."""
    folder = tmp_path / 'bin'
    folder.mkdir()
    (folder / 'sbatch').write_text('#!/bin/sh\necho "$@" >> "$0.calls"\nwc -l < "$0.calls"\n', encoding='utf-8')
    (folder / 'sbatch').chmod(0o755)
    monkeypatch.setenv('PATH', f'{folder}{os.pathsep}{os.environ["PATH"]}')
    return folder / 'sbatch.calls'


@pytest.mark.skipif(sys.platform == 'win32', reason='Slurm clusters run Linux; the stand-in sbatch is a shell script')
def test_a_sweep_submits_one_task_per_run_then_the_evaluation_after_them(run_main, sbatch, tmp_path):
    result = run_main('slurm/sweep.py', '--setting', 'all', '--seeds', '2', '--epochs', '3', '--time', '0:30:00')
    assert result.returncode == 0, result.stderr
    runs_, evaluation = sbatch.read_text(encoding='utf-8').splitlines()
    out, data = tmp_path / 'out', tmp_path / 'data'
    assert '--array=0-7 ' in runs_ and '--cpus-per-task=2 ' in runs_ and '--time=0:30:00 ' in runs_
    train = (
        f'{sys.executable} {ROOT}/MNIST_train.py --setting all --data-dir {data} --out-dir {out} --seeds=2 --epochs=3'
    )
    assert runs_.endswith(f' {ROOT}/slurm/task.sbatch {train}')  # the trainer's command: the task adds --task I
    assert '--dependency=afterany:1 ' in evaluation  # also after a run that failed
    evaluate = f'{ROOT}/MNIST_evaluation.py --setting all --data-dir {data} --out-dir {out}'
    assert evaluation.endswith(f'--wrap={sys.executable} {evaluate}')
    assert 'job array 1, one task per run (8 in all, --cpus-per-task 2 each)' in result.stdout
    assert 'evaluation as job 2, which starts once every task has ended' in result.stdout
    assert (out / 'logs').is_dir()


@pytest.mark.skipif(sys.platform == 'win32', reason='Slurm clusters run Linux; the stand-in sbatch is a shell script')
def test_bad_sweeps_get_one_sentence_before_anything_is_submitted(run_main, sbatch, tmp_path, monkeypatch):
    unknown = run_main('slurm/sweep.py', '--setting', 'nine')
    assert_clean_error(unknown, "unknown setting 'nine'; choose from 1, 2")
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder', encoding='utf-8')
    unwritable = run_main('slurm/sweep.py', '--setting', '2', out=blocker / 'out')
    assert_clean_error(unwritable, f'error: cannot write the output folder {blocker / "out"}')
    assert unwritable.stderr.count('\n') == 1 and not sbatch.exists()  # nothing submitted
    (tmp_path / 'bin' / 'sbatch').write_text(
        '#!/bin/sh\necho "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2\nexit 1\n',
        encoding='utf-8',
    )
    refused = run_main('slurm/sweep.py', '--setting', '2')
    assert_clean_error(refused, 'error: sbatch refused the runs: sbatch: error: Batch job submission failed: Invalid')
    monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
    nowhere = run_main('slurm/sweep.py', '--setting', '2')
    assert_clean_error(nowhere, 'error: sbatch is not on the PATH', 'python MNIST_train.py --jobs N')
