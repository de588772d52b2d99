"""The report shows exactly what was trained, and explains its results."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

from tests.conftest import ROOT, script_env
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
    assert_clean_error(refused, 'holds runs of several seeds', '--force')


def test_a_stopped_run_is_reported_with_the_epochs_it_trained_and_how_to_continue(run_main, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        ctrl_c_at_epoch(5, patch)  # seed 1, in its second epoch
        assert run_main('MNIST_train.py', '--setting', '2', '--seeds', '2', '--epochs', '3').returncode == 130
    evaluated = run_main('MNIST_evaluation.py')
    assert evaluated.returncode == 0, evaluated.stderr
    (line,) = [line for line in evaluated.stdout.splitlines() if 'trained 1 of 3 epochs' in line]
    assert line.startswith('Setting 2 seed 1: trained 1 of 3 epochs; continue with: python MNIST_train.py --setting 2')
    row = report_rows(tmp_path / 'out')['2']
    assert row['Epoch'] == '1-3 of 3' and row['100 epoch training time'].endswith(' s (from 1-3 epochs)')
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
    assert_clean_error(damaged, f'Setting 2: skipped: {best} is damaged')
    assert damaged.stderr.count('\n') == 1


def summary_of(out):
    return (out / 'report.md').read_text(encoding='utf-8').split('## Summary of results\n\n')[1].split('\n')[0]


def made_up(name, accuracy, final_train_loss):
    """A setting's result as the evaluation hands it to the report: one seed, 10 epochs, its best at epoch 6."""
    from MNIST_model import setting

    losses = [dict(epoch=e, train_loss=final_train_loss * (11 - e), val_loss=0.1) for e in range(1, 11)]
    history = {'hyperparameters': {**setting(name), 'epochs': 10}, 'epochs': losses, 'seed': 0, 'best_epoch': 6}
    return [{'accuracy': accuracy, 'epoch': 6, 'history': history}]


def test_the_summary_says_where_weight_decay_helps_and_where_it_hurts():
    import report
    from MNIST_model import Config

    rows = {2: made_up(2, 0.9787, 1e-4), 4: made_up(4, 0.9720, 0.09), 'Adam-0.001': made_up('Adam-0.001', 0.9801, 0.01)}
    text = report.summary(rows, Config)
    assert 'lowered the test accuracy of Adam by 0.67 points (λ = 0.01, #4)' in text  # hurts
    assert 'the best λ was 0.001 for Adam (98.01%, 0.14 points above λ = 0)' in text  # helps
    assert 'held the network back from fitting, underfitting' in text and 'Adadelta' not in text
    assert set(re.findall(r'\d+\.\d\d%', text)) <= {'97.87%', '97.20%', '98.01%'}


def test_the_summary_and_learning_curves_of_real_runs(run_main, tmp_path):
    for name in ('2', '4', 'Adam-0.001'):
        assert run_main('MNIST_train.py', '--setting', name, '--epochs', '3').returncode == 0
    assert run_main('MNIST_evaluation.py').returncode == 0
    out = tmp_path / 'out'
    accuracy = {name: row['Accuracy'] for name, row in report_rows(out).items()}
    text = summary_of(out)
    assert set(re.findall(r'\d+\.\d\d%', text)) <= set(accuracy.values())  # every figure is the table's
    a = {name: float(value[:-1]) for name, value in accuracy.items()}
    change = 'raised' if a['4'] > a['2'] else 'lowered'
    assert f'{change} the test accuracy of Adam by {abs(a["4"] - a["2"]):.2f} point' in text
    direction = 'above' if a['Adam-0.001'] > a['2'] else 'below'
    assert f'0.001 for Adam ({accuracy["Adam-0.001"]}, {abs(a["Adam-0.001"] - a["2"]):.2f} point' in text
    assert f'{direction} λ = 0' in text and 'Each setting is a single run' in text
    assert '](learning_curves.png)' in (out / 'report.md').read_text(encoding='utf-8')
    assert (out / 'learning_curves.png').stat().st_size > 0


def test_the_summary_compares_only_what_was_trained(run_main, tmp_path):
    assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '2', '--seeds', '2').returncode == 0
    assert run_main('MNIST_evaluation.py').returncode == 0
    alone = summary_of(tmp_path / 'out')
    assert alone.startswith('Setting #2 reached ') and not {'beat', 'ahead', 'seeds', 'single'} & set(alone.split())
    assert run_main('MNIST_train.py', '--setting', '1', '--epochs', '2', '--seeds', '2').returncode == 0
    assert run_main('MNIST_evaluation.py').returncode == 0
    both = summary_of(tmp_path / 'out')
    assert 'Adam beat Adadelta' in both or 'Adadelta beat Adam' in both
    assert 'Over 2 seeds, the ' in both and 'the seed-to-seed spread' in both
