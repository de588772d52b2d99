"""The report shows exactly what was trained, and explains its results."""

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, posix_signals, script_env
from tests.test_reliability import assert_clean_error, ctrl_c_at_epoch


def report_rows(out):
    with open(out / 'report.csv', encoding='utf-8-sig', newline='') as f:
        return {row['Setting']: row for row in csv.DictReader(f)}


def test_force_starts_a_setting_over_whatever_seeds_it_had(cli, run_main, tmp_path):
    assert cli('MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '1').returncode == 0
    assert cli('MNIST_train.py', '--setting', '2', '--epochs', '3', '--force').returncode == 0
    evaluated = run_main('MNIST_evaluation.py')
    assert evaluated.returncode == 0 and 'seed' not in evaluated.stdout, evaluated.stderr
    assert (
        report_rows(tmp_path / 'out')['2']['Epoch'] == '3' and '±' not in report_rows(tmp_path / 'out')['2']['Accuracy']
    )
    assert run_main('MNIST_train.py', '--setting', '2', '--seeds', '3', '--epochs', '2', '--force').returncode == 0
    assert run_main('MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '1', '--force').returncode == 0
    evaluated = run_main('MNIST_evaluation.py')
    lines = [line.split(':')[0] for line in evaluated.stdout.splitlines() if 'accuracy of the' in line]
    assert lines == ['Setting 2 seed 0', 'Setting 2 seed 1']
    assert 'seed 2' not in evaluated.stdout and report_rows(tmp_path / 'out')['2']['Epoch'] == '1'
    refused = run_main('MNIST_train.py', '--setting', '2', '--epochs', '1', '--resume')  # beside the seeds' runs
    over = 'start the setting over with: python MNIST_train.py --setting 2 --epochs 1 --force'
    assert_clean_error(refused, 'holds runs of several seeds; continue them with --seeds K --resume, or ' + over)


def test_a_stopped_run_is_reported_with_the_epochs_it_trained_and_how_to_continue(run_main, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        ctrl_c_at_epoch(5, patch)  # seed 1, in its second epoch
        assert run_main('MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '3').returncode == 130
    evaluated = run_main('MNIST_evaluation.py')
    assert evaluated.returncode == 0, evaluated.stderr
    (line,) = [line for line in evaluated.stdout.splitlines() if 'trained 1 of 3 epochs' in line]
    left = 'left out of the table (Setting #2 there: 3 of 3 epochs, seed 0)'
    assert line.startswith(f'Setting 2 seed 1: trained 1 of 3 epochs; {left}; continue with: python MNIST_train.py')
    row = report_rows(tmp_path / 'out')['2']  # seed 0 alone: its 3 epochs are not averaged with seed 1's 1
    assert row['Epoch'] == '3' and row['100 epoch training time'].endswith(' s (from 3 epochs)')
    assert '±' not in row['Accuracy'] and 'seeds' not in row['Accuracy']
    assert f'- {line}' in (tmp_path / 'out' / 'report.md').read_text(encoding='utf-8')
    command = line.split('continue with: ')[1]  # as printed, through a shell
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']
    resumed = subprocess.run(command, shell=True, cwd=ROOT, env=script_env(PATH=path), capture_output=True)
    assert resumed.returncode == 0, resumed.stderr
    evaluated = run_main('MNIST_evaluation.py')
    assert 'epochs; continue with' not in evaluated.stdout and report_rows(tmp_path / 'out')['2']['Epoch'] == '3'


def test_only_the_files_the_project_wrote_count(run_main, tmp_path):
    assert run_main('MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '2').returncode == 0
    setting = tmp_path / 'out' / 'setting_2'
    shutil.copytree(setting / 'seed_1', setting / 'seed_1_old')  # renamed by hand
    history = json.loads((setting / 'seed_0' / 'history.json').read_text(encoding='utf-8'))
    best = setting / 'seed_0' / f'epoch_{history["best_epoch"]}.pth'
    shutil.copy(best, setting / 'seed_0' / f'epoch_{history["best_epoch"]} copy.pth')  # a file manager's copy
    shutil.copy(best, setting / 'seed_0' / 'epoch_99.pth')  # a name the project writes, but not the best's
    evaluated = run_main('MNIST_evaluation.py')
    assert evaluated.returncode == 0 and evaluated.stderr == '', evaluated.stderr
    lines = [line for line in evaluated.stdout.splitlines() if 'accuracy of the' in line]
    assert [line.split(':')[0] for line in lines] == ['Setting 2 seed 0', 'Setting 2 seed 1']
    assert f'accuracy of the {history["best_epoch"]} epoch trained model' in lines[0]
    best.write_bytes(b'not a checkpoint')
    damaged = run_main('MNIST_evaluation.py')
    assert_clean_error(damaged, f'Setting 2 seed 0: skipped: {best} is damaged')
    assert damaged.stderr.count('\n') == 1


def summary_of(out):
    """The summary's claims in report.md, one a line."""
    text = (out / 'report.md').read_text(encoding='utf-8').split('## Summary of results\n\n')[1].split('\n\n')[0]
    return [line.removeprefix('- ').removesuffix('.') for line in text.splitlines()]


def test_the_summary_and_learning_curves_of_real_runs(run_main, tmp_path):
    for name in ('2', '4', 'Adam-0.001'):
        assert run_main('MNIST_train.py', '--setting', name, '--epochs', '3').returncode == 0
    assert run_main('MNIST_evaluation.py').returncode == 0
    out = tmp_path / 'out'
    accuracy = {name: row['Accuracy'] for name, row in report_rows(out).items()}
    lines = summary_of(out)
    assert set(re.findall(r'\d+\.\d\d%', ' '.join(lines))) <= set(accuracy.values())  # every figure is the table's
    a = {name: float(value[:-1]) for name, value in accuracy.items()}
    best = '4' if a['4'] > a['2'] else '2'
    same = a['4'] == a['2']
    decay = 'With Adam, λ = 0.01 (#4) '
    decay += f'tied at {accuracy["2"]} with λ = 0 (#2)' if same else f'scored {abs(a["4"] - a["2"]):.2f} point'
    assert lines[0].startswith(decay), lines  # first, with no lead line before it to say the same
    sweep = [line for line in lines if 'sweep' in line]  # one λ of the sweep: nothing to compare it with, said so
    assert sweep == [next(line for line in lines if line.startswith('Setting #Adam-0.001 is not compared with λ = 0'))]
    report = (out / 'report.md').read_text(encoding='utf-8')
    assert f'**Where Setting #{best} goes wrong on the test split**' in report  # the summary's best
    assert '](learning_curves.png)' in report and (out / 'learning_curves.png').stat().st_size > 0


def test_the_summary_compares_only_what_was_trained(run_main, tmp_path):
    assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '2', '--seeds', '2').returncode == 0
    assert run_main('MNIST_evaluation.py').returncode == 0
    cell = report_rows(tmp_path / 'out')['2']['Accuracy']
    assert cell.endswith(' (2 seeds)') and summary_of(tmp_path / 'out') == [f'Setting #2 reached {cell.split()[0]}']
    assert run_main('MNIST_train.py', '--setting', '1', '--epochs', '2', '--seeds', '2').returncode == 0
    assert run_main('MNIST_evaluation.py').returncode == 0
    both = summary_of(tmp_path / 'out')
    a = {name: float(row['Accuracy'].split('%')[0]) for name, row in report_rows(tmp_path / 'out').items()}
    assert both[0].startswith('At λ = 0, ') and (' tied at ' in both[0]) == (a['1'] == a['2'])  # no lead to repeat it
    assert (a['1'] == a['2']) != both[-1].startswith('Over 2 seeds, the lead of #')


def test_seeds_of_other_epochs_are_left_out_of_the_row_and_named(run_main, tmp_path):
    assert run_main('MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '1').returncode == 0
    assert (
        run_main(
            'MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '3', '--task', '1', '--resume'
        ).returncode
        == 0
    )
    evaluated = run_main('MNIST_evaluation.py')
    assert evaluated.returncode == 0, evaluated.stderr
    line = 'Setting 2 seed 0: trained 1 of 1 epochs; left out of the table (Setting #2 there: 3 of 3 epochs, seed 1)'
    assert line in evaluated.stdout.splitlines()
    assert f'- {line}\n' in (tmp_path / 'out' / 'report.md').read_text(encoding='utf-8')
    row = report_rows(tmp_path / 'out')['2']
    assert row['Epoch'] == '3' and '±' not in row['Accuracy'] and 'seeds' not in row['Accuracy']


def test_a_seed_stopped_in_its_first_epoch_is_named_with_the_command_that_continues_it(run_main, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        ctrl_c_at_epoch(3, patch)  # seed 1, in its first epoch
        assert run_main('MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '2').returncode == 130
    evaluated = run_main('MNIST_evaluation.py')
    assert evaluated.returncode == 0, evaluated.stderr
    (line,) = [line for line in evaluated.stdout.splitlines() if line.startswith('Setting 2 seed 1: ')]
    command = 'python MNIST_train.py --setting 2 --epochs 2 --seeds 2 --task 1'
    assert line.startswith(f'Setting 2 seed 1: trained 0 of 2 epochs; continue with: {command}')
    assert f'- {line}\n' in (tmp_path / 'out' / 'report.md').read_text(encoding='utf-8')
    assert '±' not in report_rows(tmp_path / 'out')['2']['Accuracy']
    assert run_main(*shlex.split(line.split('continue with: ')[1])[1:]).returncode == 0  # the command as printed
    evaluated = run_main('MNIST_evaluation.py')
    assert 'continue with' not in evaluated.stdout and report_rows(tmp_path / 'out')['2']['Accuracy'].endswith(
        '(2 seeds)'
    )


def test_a_run_whose_lock_is_held_is_still_training_and_is_read_beside_its_training(run_main, tmp_path, monkeypatch):
    import runs

    with monkeypatch.context() as patch:
        ctrl_c_at_epoch(2, patch)
        assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '3').returncode == 130
    folder = tmp_path / 'out' / 'setting_2'
    with runs.lock(str(folder)), runs.training(str(folder)):  # as its trainer holds them
        evaluated = run_main('MNIST_evaluation.py')
    assert 'Setting 2: training, 1 of 3 epochs done' in evaluated.stdout.splitlines()
    assert 'continue with' not in evaluated.stdout
    real_load, trained = json.load, []

    def load_then_train_on(f):  # the trainer saves a new best epoch between the readings of history and checkpoint
        history = real_load(f)
        if not trained:
            trained.append(new_best_epoch(folder, history))
        return history

    monkeypatch.setattr(json, 'load', load_then_train_on)
    evaluated = run_main('MNIST_evaluation.py')
    assert evaluated.returncode == 0 and evaluated.stderr == '', evaluated.stderr
    assert 'Setting 2: accuracy of the 2 epoch trained model' in evaluated.stdout


def new_best_epoch(folder, history):
    """What the trainer writes after an epoch that validates best, in its order: the new best checkpoint, the history
    that names it, then the deletion of the old one."""
    import torch

    import runs

    old = folder / f'epoch_{history["best_epoch"]}.pth'
    runs.save_torch(str(folder / 'epoch_2.pth'), torch.load(old, weights_only=True) | {'epoch': 2})
    epochs = [*history['epochs'], {**history['epochs'][-1], 'epoch': 2}]
    runs.save_history(str(folder), {**history, 'epochs': epochs, 'best_epoch': 2})
    old.unlink()


@pytest.mark.slow
@posix_signals
def test_the_commands_printed_continue_the_run_through_a_shell(big_data, tmp_path, run_main):
    """The trainer's command after Ctrl-C and the report's, for a run of --seed 5 in a folder with a space and
    brackets, each run as printed through a shell."""
    out = tmp_path / 'runs [v2]' / 'a b'
    args = [*'--setting 2 --seed 5 --epochs 4 --device cpu --data-dir'.split(), str(big_data), '--out-dir', str(out)]
    cmd = [sys.executable, os.path.join(ROOT, 'MNIST_train.py'), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding='utf-8', env=script_env())
    for line in proc.stdout:
        if 'epoch   1/4' in line:
            proc.send_signal(signal.SIGINT)
            break
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    trainer = err.strip().split('Continue with: ')[1]
    evaluated = run_main('MNIST_evaluation.py', data=big_data, out=out)
    (note,) = [line for line in evaluated.stdout.splitlines() if 'continue with: ' in line]
    evaluation = note.split('continue with: ')[1]
    assert '--seed 5' in trainer and '--seed 5' in evaluation
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']  # `python` is this test's Python
    for command in (evaluation, trainer):  # the first ends the run, the second finds it ended
        done = subprocess.run(command, shell=True, cwd=ROOT, env=script_env(PATH=path), capture_output=True)
        assert done.returncode == 0, done.stderr
    history = json.loads((out / 'setting_2' / 'history.json').read_text(encoding='utf-8'))
    assert len(history['epochs']) == 4 and history['seed'] == 5


@posix_signals
def test_each_run_of_a_running_command_is_said_as_it_is(big_data, tmp_path, run_main):
    """While `--setting all` trains Setting 2: Setting 1 finished, Setting 2 training, Settings 3 and 4 waiting their
    turn; none is "still training" when it is not, or "not trained yet" with a command that would be refused."""
    out = tmp_path / 'out'
    args = [*'--setting all --epochs 2 --device cpu --data-dir'.split(), str(big_data), '--out-dir', str(out)]
    cmd = [sys.executable, os.path.join(ROOT, 'MNIST_train.py'), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding='utf-8', env=script_env())
    try:
        for line in proc.stdout:
            if line.startswith('Setting 2 | epoch   1/2'):
                proc.send_signal(signal.SIGSTOP)  # frozen in Setting 2's second epoch
                break
        evaluated = run_main('MNIST_evaluation.py', data=big_data)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.communicate(timeout=300)
    lines = evaluated.stdout.splitlines()
    assert evaluated.returncode == 0 and proc.returncode == 0, evaluated.stderr
    assert [line.split(':')[0] for line in lines if 'accuracy of the' in line] == ['Setting 1', 'Setting 2']
    assert 'Setting 2: training, 1 of 2 epochs done' in lines
    assert 'Setting 3: waiting its turn in a running command' in lines
    assert 'Setting 4: waiting its turn in a running command' in lines
    assert not [line for line in lines if line.startswith('Setting 1: ')][1:], lines  # finished: its accuracy alone
    report = (out / 'report.md').read_text(encoding='utf-8')
    assert '- Setting 1' not in report and '- Setting 2: training, 1 of 2 epochs done' in report


def test_seeds_waiting_their_turn_are_not_called_untrained(run_main, tmp_path):
    """The seeds' runs that a command of --seeds has claimed, with nothing written yet, wait their turn."""
    import runs

    out = tmp_path / 'out'
    assert run_main('MNIST_train.py', '--setting', '1', '--epochs', '1').returncode == 0
    with runs.lock(str(out / 'setting_2' / 'seed_0')), runs.lock(str(out / 'setting_2' / 'seed_1')):
        evaluated = run_main('MNIST_evaluation.py')
    lines = evaluated.stdout.splitlines()
    assert 'Setting 2 seed 0: waiting its turn in a running command' in lines
    assert 'Setting 2 seed 1: waiting its turn in a running command' in lines
    assert 'Setting 2: not' not in evaluated.stdout and evaluated.returncode == 0


def test_a_setting_not_trained_yet_is_hinted_as_the_other_runs_here_trained(run_main, tmp_path):
    """Where Setting 1 was trained with seeds, the hint trains Setting 2 as it, seeds and epochs, so that a command
    of both settings with --resume is not refused."""
    assert run_main('MNIST_train.py', '--setting', '1', '--seeds', '2', '--epochs', '2').returncode == 0
    evaluated = run_main('MNIST_evaluation.py')
    hint = 'Setting 2: not trained yet; train it with: python MNIST_train.py --setting 2 --epochs 2 --seeds 2 '
    (line,) = [text for text in evaluated.stdout.splitlines() if text.startswith(hint)]
    assert run_main(*shlex.split(line.split('train it with: ')[1])[1:]).returncode == 0  # as printed
    again = run_main('MNIST_train.py', '--setting', 'all', '--seeds', '2', '--epochs', '2', '--task', '0', '--resume')
    assert again.returncode == 0 and 'Setting 1 seed 0: finished, 2 of 2 epochs' in again.stdout
