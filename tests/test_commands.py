"""Random chains of the real commands on small synthetic data, against a model of the runs that they leave: no
finished run is lost unless a command named it with --force, every line that the evaluation prints on a run says
its state, and every command that a message prints does, run as printed, what its sentence says."""

import contextlib
import io
import os
import pathlib
import shlex
import shutil
import sys
import tempfile

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import cli
import MNIST_evaluation
import MNIST_train
import runs
from tests.idx import write_mnist
from tests.test_reliability import ctrl_c_at_epoch

SETTINGS = ['1', '2']
settings.register_profile('commands', max_examples=5, stateful_step_count=8, deadline=None, derandomize=True)
settings.register_profile('deep', max_examples=200, stateful_step_count=20, deadline=None)  # HYPOTHESIS_PROFILE=deep


def run(script, argv, interrupt_at=None):
    """A script's main() as its command line runs it, in this process: (exit status, stdout, stderr). Ctrl-C comes
    as the `interrupt_at`-th epoch starts."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if interrupt_at:
            ctrl_c_at_epoch(interrupt_at, patch)
        try:
            code = cli.run_script(lambda: script.main(argv))
        except SystemExit as e:  # a string: the sentence that Python prints, with status 1
            code = e.code if isinstance(e.code, int) else 1
            print(e.code if isinstance(e.code, str) else '', file=sys.stderr)
    return code, out.getvalue(), err.getvalue()


class Commands(RuleBasedStateMachine):
    """The model: each run, (setting, seed of --seeds or None), with its epochs trained and planned, and whether
    its history.json and last.pth are whole."""

    def __init__(self):
        super().__init__()
        self.root = tempfile.mkdtemp()
        write_mnist(os.path.join(self.root, 'data', 'MNIST', 'raw'))
        self.folders = ['--device', 'cpu', '--data-dir', os.path.join(self.root, 'data')]
        self.folders += ['--out-dir', os.path.join(self.root, 'out')]
        self.runs = {}

    def teardown(self):
        shutil.rmtree(self.root)

    def folder(self, key):
        return runs.run_dir(os.path.join(self.root, 'out'), key[0], key[1])

    def label(self, key):
        return f'Setting {key[0]}' + ('' if key[1] is None else f' seed {key[1]}')

    def files(self):
        """Every file that a run wrote, with its bytes, by run."""
        found = {}
        for key in self.runs:
            folder = self.folder(key)
            names = [n for n in sorted(os.listdir(folder)) if not n.startswith('.')] if os.path.isdir(folder) else []
            found[key] = {n: pathlib.Path(folder, n).read_bytes() for n in names if not n.startswith('seed_')}
        return found

    def train(self, args, interrupt_at=None):
        """Run the trainer with `args` as the model expects it to go; returns its stderr."""
        p = {'setting': None, 'epochs': None, 'seeds': None, 'task': None, 'resume': False, 'force': False}
        words = iter(args)
        for word in words:
            key = word.removeprefix('--')
            p[key] = True if key in ('resume', 'force') else next(words)
        seeds = list(range(int(p['seeds']))) if p['seeds'] else [None]
        targets = [(p['setting'], s) for s in seeds]
        targets = targets if p['task'] is None else targets[int(p['task']) : int(p['task']) + 1]
        epochs = int(p['epochs'] or 100)
        before = self.files()
        if p['force'] and p['task'] is None:  # the command trains its settings whole
            self.runs = {k: v for k, v in self.runs.items() if k[0] != p['setting']}
        trained, refused = [], []
        for key in targets:
            r = self.runs.get(key)
            others = [k for k in self.runs if k[0] == key[0] and (k[1] is None) != (key[1] is None)]
            results = r and (r['trained'] or r['last'])
            if others:
                refused.append(key)
            elif r and not r['history'] and not p['force'] and not (p['resume'] and r['last_whole']):
                refused.append(key)
            elif results and not p['resume'] and not p['force']:
                refused.append(key)
            elif r and p['resume'] and r['trained'] and not r['last']:
                refused.append(key)
            elif r and p['resume'] and r['trained'] > epochs:
                refused.append(key)
            elif r and p['resume'] and r['trained'] and not r['last_whole']:
                refused.append(key)
            else:
                trained.append(key)
        code, out, err = run(MNIST_train, [*args, *self.folders], interrupt_at)
        assert 'Traceback' not in err, err
        calls = 0
        for key in trained:
            r = self.runs.get(key) if p['resume'] else None
            start = r['trained'] if r else 0
            end = epochs if interrupt_at is None else min(epochs, start + max(0, interrupt_at - 1 - calls))
            calls += epochs - start
            self.runs[key] = dict(trained=end, planned=epochs, history=True, last=end > 0, last_whole=end > 0)
            if interrupt_at is not None and calls >= interrupt_at:
                break
        if interrupt_at is not None and calls >= interrupt_at:
            assert code == 130, (args, err)
        else:
            assert code == (1 if refused else 0), (args, code, err)
        for key in refused:
            assert self.folder(key) in err or self.folder((key[0], None)) in err, (key, err)
        after = self.files()
        for key in before:  # no run that the command did not train is touched
            if key not in trained and (key[0] != p['setting'] or not p['force'] or p['task'] is not None):
                assert after.get(key) == before[key], (args, key, err)
        return err

    @rule(
        setting=st.sampled_from(SETTINGS),
        epochs=st.integers(1, 3),
        seeds=st.sampled_from([None, 2]),
        task=st.sampled_from([None, 0, 1]),
        mode=st.sampled_from(['', '--resume', '--force']),
        interrupt_at=st.none() | st.integers(1, 4),
    )
    def command(self, setting, epochs, seeds, task, mode, interrupt_at):
        if task is not None and task >= (seeds or 1):
            return
        args = ['--setting', setting, '--epochs', str(epochs)]
        args += ['--seeds', str(seeds)] if seeds else []
        args += ['--task', str(task)] if task is not None else []
        self.train([*args, *([mode] if mode else [])], interrupt_at)

    @rule(data=st.data(), damage=st.sampled_from(['history.json', 'last.pth']))
    def damage(self, data, damage):
        trained = [k for k, r in self.runs.items() if r['trained']]
        if not trained:
            return
        key = data.draw(st.sampled_from(sorted(trained, key=str)))
        with open(os.path.join(self.folder(key), damage), 'r+b') as f:
            f.truncate(20)
        self.runs[key] = {**self.runs[key], 'history' if damage == 'history.json' else 'last_whole': False}

    @rule(data=st.data(), training=st.booleans())
    def evaluate_beside_a_command(self, data, training):
        """A second command holds one run, waiting its turn or training: the evaluation says so, and a training of
        that run is refused in one sentence."""
        keys = sorted(self.runs, key=str)
        if not keys:
            return
        key = data.draw(st.sampled_from(keys))
        r = self.runs[key]
        with runs.lock(self.folder(key)), contextlib.ExitStack() as held:
            if training:
                held.enter_context(runs.training(self.folder(key)))
            code, out, err = run(MNIST_evaluation, self.folders)
            lines = (out + err).splitlines()
            if training and r['history']:
                assert f'{self.label(key)}: training, {r["trained"]} of {r["planned"]} epochs done' in lines, lines
            elif r['history'] and r['trained'] < r['planned']:
                assert any(line.startswith(f'{self.label(key)}: waiting its turn') for line in lines), lines
            own = ['--seeds', str(key[1] + 1), '--task', str(key[1])] if key[1] is not None else []
            refused = run(MNIST_train, ['--setting', key[0], *own, '--resume', *self.folders])
            assert f'another command holds {self.folder(key)}, training it or waiting to' in refused[2], refused

    @rule()
    def evaluate(self):
        """Every run's line says its state, and the commands that they print do what they say."""
        code, out, err = run(MNIST_evaluation, self.folders)
        assert 'Traceback' not in err, err
        lines = (out + err).splitlines()
        advice = []
        damaged = [k for k, r in self.runs.items() if not r['history'] or self.cannot_continue(r)]
        evaluated = [k for k, r in self.runs.items() if r['trained'] and k not in damaged]
        for key, r in sorted(self.runs.items(), key=str):
            mine = [line for line in lines if line.startswith(f'{self.label(key)}: ')]
            said = ' | '.join(mine)
            if not r['history']:
                assert len(mine) == 1 and f'{self.label(key)}: skipped: ' in said, (key, r, lines)
                assert ('continue it with: ' if r['last'] and r['last_whole'] else 'train it again with: ') in said
                advice.append((key, said.split(' with: ')[-1]))
            elif self.cannot_continue(r):
                assert f'{self.label(key)}: skipped: ' in said and 'train it again with: ' in said, (key, r, lines)
                advice.append((key, said.split(' with: ')[-1]))
            elif r['trained'] < r['planned']:
                assert f'trained {r["trained"]} of {r["planned"]} epochs' in said, (key, r, lines)
                advice.append((key, said.split('continue with: ')[1]))
            else:
                assert f'{self.label(key)}: accuracy of the ' in said and 'continue' not in said, (key, r, lines)
            if key in evaluated:
                assert 'accuracy of the ' in said, (key, r, lines)
        assert code == (1 if damaged or not evaluated else 0), (code, lines)
        for key, command in advice[:1]:  # as printed, through the trainer
            words = shlex.split(command)
            assert words[:2] == ['python', 'MNIST_train.py'], command
            self.train([w for w in words[2:] if w not in self.folders])
            r = self.runs[key]
            assert r['trained'] == r['planned'] and r['history'], (command, r)

    def cannot_continue(self, r):
        return r['trained'] < r['planned'] and r['trained'] and not r['last_whole']

    @invariant()
    def no_run_is_left_locked(self):
        for key in self.runs:
            assert not runs.is_locked(self.folder(key)) and not runs.is_locked(self.folder(key), runs.TRAINING)


Commands.TestCase.settings = settings.get_profile(os.environ.get('HYPOTHESIS_PROFILE', 'commands'))
test_chains_of_commands = Commands.TestCase
