"""Measure each trained setting's best checkpoint on the MNIST test split and write the evaluation report.

python MNIST_evaluation.py               # every trained setting under saved_model/
python MNIST_evaluation.py --setting 2   # one setting
"""

import argparse
import csv
import glob
import io
import json
import os
import statistics
import sys

import matplotlib.pyplot as plt

from MNIST_model import Config, add_common_args, build_model, data_load, predict, setting
from MNIST_train import plot_val_accuracy
from runs import best_checkpoint, fail, load_checkpoint, run_dir, run_script, save_atomic, save_figure, start_process

COLUMNS = (
    'Batch_size',
    'Activation function',
    '# of layers',
    'Layer size',
    'Epoch',
    'Weight initialization',
    'Optimizer',
    'Learning rate',
    'Weight decay',
    '100 epoch training time',
    'Early stopping epoch',
    'Accuracy',
)
NAMES = {
    'relu': 'ReLU',
    'sigmoid': 'Sigmoid',
    'tanh': 'Tanh',
    'leaky_relu': 'Leaky ReLU (0.1)',
    'elu': 'ELU',
    'maxout': 'Maxout (2)',
    'he': 'He',
    'xavier': 'Xavier',
}


def load_model(checkpoint, path, hyper, device='cpu'):
    """The network of a run's hyperparameters with the weights of its checkpoint; ValueError says what is wrong."""
    model = build_model({**Config.base, **hyper}).to(device)
    try:
        model.load_state_dict(checkpoint['model_state_dict'])
    except ValueError as e:  # the checkpoint's network differs from the run's
        raise ValueError(f'{path} does not fit its run: {e}') from None
    except (RuntimeError, KeyError, TypeError):
        raise ValueError(f'{path} does not fit the model of its setting (wrong layer names or shapes)') from None
    return model


def runs_of(out_dir, name):
    """Result folders of a setting: one per seed, or the setting's own folder."""
    seeds = sorted(glob.glob(os.path.join(run_dir(out_dir, name), 'seed_*')), key=lambda p: int(p.rsplit('_', 1)[1]))
    return [p for p in seeds if best_checkpoint(p)] or [p for p in [run_dir(out_dir, name)] if best_checkpoint(p)]


def evaluate_run(folder, x, y, device):
    """Test accuracy of a run's best checkpoint, with its history."""
    try:
        with open(os.path.join(folder, 'history.json')) as f:
            history = json.load(f)
        hyper = history['hyperparameters']
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f'{folder}/history.json is missing or damaged; train the setting again') from None
    path = best_checkpoint(folder)
    checkpoint = load_checkpoint(path, device)
    accuracy = (predict(load_model(checkpoint, path, hyper, device), x).argmax(1) == y).float().mean().item()
    return dict(epoch=checkpoint['epoch'], accuracy=accuracy, history=history)


def mean_std(values, fmt):
    if len(values) == 1:
        return fmt.format(values[0])
    return f'{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}'


def table_row(results):
    """The assignment's twelve columns for one setting (mean ± std over seeds where there are several)."""
    h = results[0]['history']['hyperparameters']
    return [
        h['batch_size'],
        NAMES.get(h['activation'], h['activation']),
        h['layers'],
        h['width'],
        h['epochs'],
        NAMES.get(h['init'], h['init']),
        h['optimizer'],
        f'{h["lr"]:g}',
        f'{h["weight_decay"]:g}',
        mean_std([100 * r['history']['training_time'] / len(r['history']['epochs']) for r in results], '{:.1f} s'),
        mean_std([r['epoch'] for r in results], '{:.0f}'),
        mean_std([100 * r['accuracy'] for r in results], '{:.2f}%'),
    ]


def differences(hyper):
    """What a run's hyperparameters change relative to Setting 2 (epochs have their own column)."""
    ref = setting(2)
    return ', '.join(f'{k}={v}' for k, v in hyper.items() if k != 'epochs' and v != ref.get(k)) or 'nothing'


def markdown_table(header, rows):
    lines = [header, ['---'] * len(header), *rows]
    return '\n'.join('| ' + ' | '.join(map(str, line)) + ' |' for line in lines)


def plot_panels(rows, path):
    """The report's row of validation accuracy plots, one panel per setting."""
    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 3.6), squeeze=False)
    for ax, (name, results) in zip(axes[0], rows.items()):
        plot_val_accuracy(ax, results[0]['history'], f'Setting #{name}')
    fig.tight_layout()
    save_figure(fig, path)


def weight_decay_sweep(rows, out_dir):
    """The sweep's plot and report section: test accuracy per optimizer and lambda, mean ± std over seeds."""
    acc = {}  # optimizer -> {lambda: [test accuracy % of each seed]}
    for name in (n for n in Config.groups['wd'] if n in rows):
        h = rows[name][0]['history']['hyperparameters']
        acc.setdefault(h['optimizer'], {})[h['weight_decay']] = [100 * r['accuracy'] for r in rows[name]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for optimizer, points in acc.items():
        ax.errorbar(
            list(points),
            [statistics.mean(a) for a in points.values()],
            capsize=3,
            marker='o',
            yerr=[statistics.stdev(a) if len(a) > 1 else 0 for a in points.values()],
            label=optimizer + (' (decoupled decay)' if optimizer == 'AdamW' else ' (L2)'),
        )
    ax.set_xscale('symlog', linthresh=1e-5)  # a log axis that also shows lambda = 0
    ax.set(title='Weight decay sweep (mean ± std over seeds)', xlabel='weight decay λ', ylabel='test accuracy (%)')
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, os.path.join(out_dir, 'weight_decay.png'))
    table = [
        [f'{lam:g}', *(mean_std(p[lam], '{:.2f}%') if lam in p else '' for p in acc.values())]
        for lam in sorted({lam for points in acc.values() for lam in points})
    ]
    return [
        '## Weight decay sweep (test accuracy)',
        '',
        markdown_table(['λ', *acc], table),
        '',
        '![Weight decay sweep](weight_decay.png)',
        '',
    ]


def write_report(rows, out_dir):
    main_rows = {n: r for n, r in rows.items() if n in Config.groups['all']}
    extra_rows = {n: r for n, r in rows.items() if n not in Config.groups['all'] + Config.groups['wd']}
    body = ['# MNIST 4-layer perceptron: evaluation report', '']
    if main_rows:
        body += [
            markdown_table(['', *COLUMNS], [[f'Setting #{n}', *table_row(r)] for n, r in main_rows.items()]),
            '',
            '**Validation dataset accuracy plot**',
            '',
            '![Validation accuracy](val_accuracy.png)',
            '',
        ]
    if extra_rows:
        body += [
            '## Additional experiments',
            '',
            markdown_table(
                ['', 'Differs from Setting #2', *COLUMNS],
                [
                    [f'Setting #{n}', differences(r[0]['history']['hyperparameters']), *table_row(r)]
                    for n, r in extra_rows.items()
                ],
            ),
            '',
        ]
    if any(n in rows for n in Config.groups['wd']):
        body += weight_decay_sweep(rows, out_dir)
    body += [
        'Accuracy is measured once on the 10,000 test images; the early stopping epoch was chosen on a '
        'validation split of 10,000 images held out from the training images.',
        '',
    ]
    save_atomic(os.path.join(out_dir, 'report.md'), lambda f: f.write('\n'.join(body).encode()))
    text = io.StringIO()
    csv.writer(text).writerows([['Setting', *COLUMNS], *([n, *table_row(r)] for n, r in rows.items())])
    save_atomic(os.path.join(out_dir, 'report.csv'), lambda f: f.write(text.getvalue().encode()))
    plot_panels(main_rows or rows, os.path.join(out_dir, 'val_accuracy.png'))


def main(argv=None):
    start_process()
    p = argparse.ArgumentParser(
        description='Evaluate the best checkpoint of each trained setting on the '
        'MNIST test split and write report.md, report.csv and plots.'
    )
    add_common_args(p, required=False, setting_help='setting(s) to evaluate (default: every trained one)')
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    names = args.setting or list(Config.settings)
    asked = names if args.setting else Config.groups['all']  # untrained ones that are worth a hint
    x, y = (t.to(args.device) for t in data_load(args.data_dir, train=False))
    rows, skipped = {}, 0
    for name in names:
        folders = runs_of(args.out_dir, name)
        if not folders and name in asked:
            print(f'Setting {name}: not trained yet; train it with: python MNIST_train.py --setting {name}')
        results = []
        for folder in folders:
            try:
                results.append(evaluate_run(folder, x, y, args.device))
            except ValueError as e:
                print(f'Setting {name}: skipped: {e}', file=sys.stderr)
                skipped += 1
                continue
            seed = f' seed {results[-1]["history"]["seed"]}' if len(folders) > 1 else ''
            print(
                f'Setting {name}{seed}: accuracy of the {results[-1]["epoch"]} epoch trained model: '
                f'{100 * results[-1]["accuracy"]:.2f}%'
            )
        if results:
            rows[name] = results
    if not rows:
        fail(
            f'no trained setting to evaluate in {args.out_dir}; train one first, e.g. python MNIST_train.py --setting 1'
        )
    write_report(rows, args.out_dir)
    print(f'Report: {os.path.join(args.out_dir, "report.md")} (and report.csv and the plots beside it)')
    return 1 if skipped else 0


if __name__ == '__main__':
    sys.exit(run_script(main))
