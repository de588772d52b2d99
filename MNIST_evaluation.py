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
import torch

from MNIST_model import (Config, add_common_args, best_checkpoint, data_load, fail, load_checkpoint, load_model,
                         plot_val_accuracy, predict, run_dir, save_atomic, save_figure, setting)

COLUMNS = ('Batch_size', 'Activation function', '# of layers', 'Layer size', 'Epoch', 'Weight initialization',
           'Optimizer', 'Learning rate', 'Weight decay', '100 epoch training time', 'Early stopping epoch',
           'Accuracy')
NAMES = {'relu': 'ReLU', 'sigmoid': 'Sigmoid', 'tanh': 'Tanh', 'leaky_relu': 'Leaky ReLU (0.1)', 'elu': 'ELU',
         'maxout': 'Maxout (2)', 'he': 'He', 'xavier': 'Xavier'}
REFERENCE = 2  # extra settings are described by how they differ from this one


def parse_args(argv):
    p = argparse.ArgumentParser(description='Evaluate the best checkpoint of each trained setting on the '
                                'MNIST test split and write report.md, report.csv and plots.')
    add_common_args(p, required=False, setting_help='setting(s) to evaluate (default: every trained one)')
    return p.parse_args(argv)


def runs_of(out_dir, name):
    """Result folders of a setting: one per seed, or the setting's own folder."""
    seeds = sorted(glob.glob(os.path.join(run_dir(out_dir, name), 'seed_*')), key=lambda p: int(p.rsplit('_', 1)[1]))
    return [p for p in seeds if best_checkpoint(p)] or [p for p in [run_dir(out_dir, name)] if best_checkpoint(p)]


def evaluate_run(folder, x, y, device):
    """Test accuracy of a run's best checkpoint, with its history and predicted logits."""
    path = best_checkpoint(folder)
    checkpoint = load_checkpoint(path, device)
    model = load_model(checkpoint, path, device)
    logits = predict(model, x)
    try:
        with open(os.path.join(folder, 'history.json')) as f:
            history = json.load(f)
    except (OSError, ValueError):
        raise ValueError(f'{folder}/history.json is missing or damaged; train the setting again')
    return dict(epoch=checkpoint['epoch'], accuracy=(logits.argmax(1) == y).float().mean().item(),
                history=history, logits=logits)


def mean_std(values, fmt):
    if len(values) == 1:
        return fmt.format(values[0])
    return f'{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}'


def table_row(results):
    """The assignment's twelve columns for one setting (mean ± std over seeds where there are several)."""
    h = results[0]['history']['hyperparameters']
    return [h['batch_size'], NAMES.get(h['activation'], h['activation']), h['layers'], h['width'], h['epochs'],
            NAMES.get(h['init'], h['init']), h['optimizer'], f'{h["lr"]:g}', f'{h["weight_decay"]:g}',
            mean_std([r['history']['training_time'] for r in results], '{:.1f} s'),
            mean_std([r['epoch'] for r in results], '{:.0f}'),
            mean_std([100 * r['accuracy'] for r in results], '{:.2f}%')]


def differences(hyper):
    """What a run's hyperparameters change relative to the reference setting (epochs have their own column)."""
    ref = setting(REFERENCE)
    return ', '.join(f'{k}={v}' for k, v in hyper.items() if k != 'epochs' and v != ref.get(k)) or 'nothing'


def markdown_table(header, rows):
    lines = [header, ['---'] * len(header), *rows]
    return '\n'.join('| ' + ' | '.join(map(str, line)) + ' |' for line in lines)


def summary(rows):
    """A short results paragraph written from the numbers."""
    acc = {name: statistics.mean(r['accuracy'] for r in results) for name, results in rows.items()}
    best = max(acc, key=acc.get)
    text = [f'Setting #{best} scores best on the test split ({100 * acc[best]:.2f}%).']
    for plain, decayed, optimizer in ((1, 3, 'Adadelta'), (2, 4, 'Adam')):
        if plain in acc and decayed in acc:
            change = 100 * (acc[decayed] - acc[plain])
            text.append(f'Weight decay 0.01 {"raises" if change > 0 else "lowers"} {optimizer} accuracy by '
                        f'{abs(change):.2f} points (Setting #{plain} to #{decayed}).')
    epochs = ', '.join(f'#{name}: {statistics.mean(r["epoch"] for r in results):.0f}' for name, results in rows.items())
    text.append(f'Early stopping picked epochs {epochs}: a setting whose best epoch lies near the last has not '
                'finished improving, one far before it was overfitting afterwards.')
    return ' '.join(text)


def plot_panels(rows, path):
    """The report's row of validation accuracy plots, one panel per setting."""
    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 3.6), squeeze=False)
    for ax, (name, results) in zip(axes[0], rows.items()):
        plot_val_accuracy(ax, results[0]['history'], f'Setting #{name}')
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusion(logits, y, title, path):
    matrix = torch.zeros(10, 10, dtype=torch.long)
    matrix.index_put_((y.cpu(), logits.argmax(1).cpu()), torch.ones(len(y), dtype=torch.long), accumulate=True)
    fig, ax = plt.subplots(figsize=(6, 5.4))
    ax.imshow(matrix.clamp(max=30).numpy(), cmap='Blues')  # clamped so that the off-diagonal errors show
    for (i, j), n in zip(torch.cartesian_prod(torch.arange(10), torch.arange(10)).tolist(), matrix.flatten().tolist()):
        ax.text(j, i, n, ha='center', va='center', fontsize=8, color='white' if n > 20 else 'black')
    ax.set(title=title, xlabel='predicted', ylabel='true', xticks=range(10), yticks=range(10))
    save_figure(fig, path)


def plot_mistakes(logits, x, y, title, path, n=24):
    """The most confidently misclassified test images."""
    prob, pred = logits.softmax(1).max(1)
    wrong = (pred != y).nonzero().flatten()
    worst = wrong[prob[wrong].argsort(descending=True)[:n]].cpu()
    fig, axes = plt.subplots(3, 8, figsize=(10, 4.4))
    for ax in axes.flat:
        ax.axis('off')
    for ax, i in zip(axes.flat, worst.tolist()):
        ax.imshow(x[i].view(28, 28).cpu().numpy(), cmap='gray')
        ax.set_title(f'{y[i]} as {pred[i]} ({100 * prob[i]:.0f}%)', fontsize=8)
    fig.suptitle(f'{title}: most confident mistakes (true as predicted)')
    save_figure(fig, path)


def write_report(rows, out_dir):
    main_rows = {n: r for n, r in rows.items() if n in Config.groups['all']}
    extra_rows = {n: r for n, r in rows.items() if n not in Config.groups['all']}
    body = ['# MNIST 4-layer perceptron: evaluation report', '']
    if main_rows:
        body += [markdown_table(['', *COLUMNS], [[f'Setting #{n}', *table_row(r)] for n, r in main_rows.items()]),
                 '', '**Validation dataset accuracy plot**', '', '![Validation accuracy](val_accuracy.png)', '']
    if extra_rows:
        body += ['## Additional experiments', '',
                 markdown_table(['', f'Differs from Setting #{REFERENCE}', *COLUMNS],
                                [[f'Setting #{n}', differences(r[0]['history']['hyperparameters']), *table_row(r)]
                                 for n, r in extra_rows.items()]),
                 '']
    body += ['## Results', '', summary(rows), '',
             'Accuracy is measured once on the 10,000 test images; the early stopping epoch was chosen on a '
             'validation split of 10,000 images held out from the training images.', '']
    save_atomic(os.path.join(out_dir, 'report.md'), lambda f: f.write('\n'.join(body).encode()))
    text = io.StringIO()
    csv.writer(text).writerows([['Setting', *COLUMNS], *([n, *table_row(r)] for n, r in rows.items())])
    save_atomic(os.path.join(out_dir, 'report.csv'), lambda f: f.write(text.getvalue().encode()))
    plot_panels(main_rows or rows, os.path.join(out_dir, 'val_accuracy.png'))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = args.setting or list(Config.settings)
    asked = names if args.setting else Config.groups['all']  # untrained ones that are worth a hint
    x, y = data_load(args.data_dir, train=False)
    x, y = x.to(args.device), y.to(args.device)
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
            print(f'Setting {name}{seed}: accuracy of the {results[-1]["epoch"]} epoch trained model: '
                  f'{100 * results[-1]["accuracy"]:.2f}%')
        if results:
            rows[name] = results
    if not rows:
        fail(f'no trained setting to evaluate in {args.out_dir}; train one first, e.g. python MNIST_train.py --setting 1')
    try:
        write_report(rows, args.out_dir)
        best = max(rows, key=lambda n: max(r['accuracy'] for r in rows[n]))
        top = max(rows[best], key=lambda r: r['accuracy'])
        plot_confusion(top['logits'], y, f'Setting #{best}', os.path.join(args.out_dir, 'confusion_matrix.png'))
        plot_mistakes(top['logits'], x, y, f'Setting #{best}', os.path.join(args.out_dir, 'mistakes.png'))
    except OSError as e:
        fail(f'cannot write {e.filename}: {e.strerror}')
    print(f'Report: {os.path.join(args.out_dir, "report.md")} (and report.csv, val_accuracy.png, '
          'confusion_matrix.png, mistakes.png)')
    return 1 if skipped else 0


if __name__ == '__main__':
    sys.exit(main())
