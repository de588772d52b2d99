"""The evaluation report: the assignment's twelve columns (report.md, report.csv), the summary of results, the
additional experiments and the weight-decay sweep, and their pictures: validation accuracy, learning curves, the
confusion matrix and the most confident mistakes."""

import os
import statistics

import matplotlib.pyplot as plt

import atomic
import pictures

# How the report writes activations; the others, and initialisations, are capitalized
NAMES = {'relu': 'ReLU', 'leaky_relu': 'Leaky ReLU (0.1)', 'elu': 'ELU', 'maxout': 'Maxout (2)'}


def mean_std(values, fmt):
    if len(values) == 1:
        return fmt.format(values[0])
    return f'{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}'


def table_row(results):
    """The assignment's twelve columns for one setting (mean ± std over seeds where there are several). A run that
    stopped before its last planned epoch shows the epochs it trained, of those planned."""
    h = results[0]['history']['hyperparameters']
    times = [100 * r['history']['training_time'] / len(r['history']['epochs']) for r in results]
    trained = sorted({len(r['history']['epochs']) for r in results})
    span = str(trained[0]) if len(trained) == 1 else f'{trained[0]}-{trained[-1]}'
    return {
        'Batch_size': h['batch_size'],
        'Activation function': NAMES.get(h['activation'], h['activation'].capitalize()),
        '# of layers': h['layers'],
        'Layer size': h['width'],
        'Epoch': h['epochs'] if trained == [h['epochs']] else f'{span} of {h["epochs"]}',
        'Weight initialization': h['init'].capitalize(),
        'Optimizer': h['optimizer'],
        'Learning rate': f'{h["lr"]:g}',
        'Weight decay': f'{h["weight_decay"]:g}',
        '100 epoch training time': mean_std(times, '{:.1f} s') + ('' if trained == [100] else f' (from {span} epochs)'),
        'Early stopping epoch': mean_std([r['epoch'] for r in results], '{:.0f}'),
        'Accuracy': mean_std([100 * r['accuracy'] for r in results], '{:.2f}%'),
    }


def differences(hyper, config):
    """What a run's hyperparameters change relative to Setting 2 (epochs have their own column)."""
    ref = {**config.base, **config.settings[2]}
    return ', '.join(f'{k}={v}' for k, v in hyper.items() if k != 'epochs' and v != ref.get(k)) or 'nothing'


def markdown_table(rows, corner=''):
    """rows: {first cell: {column: cell}}."""
    header = [corner, *next(iter(rows.values()))]
    lines = [header, ['---'] * len(header), *([name, *row.values()] for name, row in rows.items())]
    return '\n'.join('| ' + ' | '.join(map(str, line)) + ' |' for line in lines)


def weight_decay_sweep(rows, out_dir, config):
    """The sweep's plot and report section: test accuracy per optimizer and lambda, mean ± std over seeds."""
    acc = {}  # optimizer -> {lambda: [test accuracy % of each seed]}
    for name in (n for n in config.groups['wd'] if n in rows):
        h = rows[name][0]['history']['hyperparameters']
        acc.setdefault(h['optimizer'], {})[h['weight_decay']] = [100 * r['accuracy'] for r in rows[name]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for optimizer, points in acc.items():
        means = [statistics.mean(a) for a in points.values()]
        stds = [statistics.stdev(a) if len(a) > 1 else 0 for a in points.values()]
        label = optimizer + (' (decoupled decay)' if optimizer == 'AdamW' else ' (L2)')
        ax.errorbar(list(points), means, yerr=stds, capsize=3, marker='o', label=label)
    ax.set_xscale('symlog', linthresh=1e-5)  # a log axis that also shows lambda = 0
    ax.set(title='Weight decay sweep (mean ± std over seeds)', xlabel='weight decay λ', ylabel='test accuracy (%)')
    ax.grid(alpha=0.3)
    ax.legend()
    pictures.save_figure(fig, os.path.join(out_dir, 'weight_decay.png'))
    table = {
        f'{lam:g}': {opt: mean_std(p[lam], '{:.2f}%') if lam in p else '' for opt, p in acc.items()}
        for lam in sorted({lam for points in acc.values() for lam in points})
    }
    plot = '![Weight decay sweep](weight_decay.png)'
    return f'## Weight decay sweep (test accuracy)\n\n{markdown_table(table, corner="λ")}\n\n{plot}\n\n'


def write_report(rows, notes, x, y, out_dir, config):
    """report.md and report.csv with the assignment's columns, and their pictures; `notes` name the runs that
    stopped before their last planned epoch."""
    table = {n: table_row(r) for n, r in rows.items()}
    assignment = {f'Setting #{n}': table[n] for n in rows if n in config.groups['all']}
    extra = {
        f'Setting #{n}': {'Differs from Setting #2': differences(r[0]['history']['hyperparameters'], config)} | table[n]
        for n, r in rows.items()
        if n not in config.groups['all'] + config.groups['wd']
    }
    best = max(rows, key=lambda n: accuracy(rows[n]))
    title = f'Setting #{best}' + (f' seed {rows[best][0]["history"]["seed"]}' if len(rows[best]) > 1 else '')
    body = '# MNIST 4-layer perceptron: evaluation report\n\n'
    if assignment:
        plot = '![Validation accuracy](val_accuracy.png)'
        body += f'{markdown_table(assignment)}\n\n**Validation dataset accuracy plot**\n\n{plot}\n\n'
    if notes:
        body += '**Runs that stopped before their last planned epoch**\n\n' + ''.join(f'- {n}\n' for n in notes) + '\n'
    curves = '![Training and validation loss](learning_curves.png)'
    body += f'## Summary of results\n\n{summary(rows, config)}\n\n**Learning curves**\n\n{curves}\n\n'
    body += f'**Where the best setting, {title}, goes wrong on the test split**\n\n'
    body += '![Confusion matrix](confusion_matrix.png)\n\n![Most confident mistakes](mistakes.png)\n\n'
    if extra:
        body += f'## Additional experiments\n\n{markdown_table(extra)}\n\n'
    if any(n in rows for n in config.groups['wd']):
        body += weight_decay_sweep(rows, out_dir, config)
    body += (
        'Accuracy is measured once on the 10,000 test images; the early stopping epoch was chosen on a '
        'validation split of 10,000 images held out from the training images.\n'
    )
    atomic.save_atomic(os.path.join(out_dir, 'report.md'), lambda f: f.write(body.encode()))
    atomic.save_csv(
        os.path.join(out_dir, 'report.csv'), [['Setting', *table[best]], *([n, *t.values()] for n, t in table.items())]
    )
    panels = {f'Setting #{n}': r[0]['history'] for n, r in rows.items() if n in config.groups['all'] or not assignment}
    pictures.plot_val_accuracy(panels, os.path.join(out_dir, 'val_accuracy.png'))
    pictures.plot_learning_curves(panels, os.path.join(out_dir, 'learning_curves.png'))
    pictures.plot_mistakes(rows[best][0], x, y, title, out_dir)


def accuracy(results):
    return statistics.mean(100 * r['accuracy'] for r in results)


def points(a, b):
    return f'{abs(a - b):.2f} point' + ('' if f'{abs(a - b):.2f}' == '1.00' else 's')


def summary(rows, config):
    """The results summary, the sheet's "[결과 정리]": only the sentences that the runs in `rows` support, every
    figure taken from them (accuracies and best epochs as the table writes them; losses of each setting's first
    seed, whose curves learning_curves.png shows)."""
    acc = {n: accuracy(rows[n]) for n in rows}
    compared = [n for n in rows if n in config.groups['all']] or [n for n in rows if n not in config.groups['wd']]
    compared = compared or [max(rows, key=acc.get)]  # the sweep alone: its best setting, and the sweep's sentence
    hyper = {n: rows[n][0]['history']['hyperparameters'] for n in rows}
    epochs = {n: rows[n][0]['history']['epochs'] for n in rows}
    ranked = sorted(compared, key=acc.get, reverse=True)
    best, text = ranked[0], []
    if len(ranked) == 1:
        text.append(f'Setting #{best} reached {acc[best]:.2f}% test accuracy.')
    else:
        text.append(
            f'Setting #{best} scored best, {acc[best]:.2f}% test accuracy, {points(acc[best], acc[ranked[1]])} '
            f'ahead of Setting #{ranked[1]} ({acc[ranked[1]]:.2f}%).'
        )
    by_decay = {}  # optimizers compared at equal weight decay
    for n in compared:
        by_decay.setdefault(hyper[n]['weight_decay'], {})[hyper[n]['optimizer']] = n

    def without_decay(n):  # the setting trained as n, but without weight decay
        same = {**hyper[n], 'weight_decay': 0.0, 'epochs': None}
        return next((m for m in rows if {**hyper[m], 'epochs': None} == same), None)

    optimizers = []
    for lam, found in by_decay.items():
        if len(found) == 2:
            (a, n), (b, m) = sorted(found.items(), key=lambda item: acc[item[1]], reverse=True)
            context = f'with weight decay {lam:g}' if lam else 'without weight decay'
            optimizers.append(f'{context}, {a} beat {b} by {points(acc[n], acc[m])} (#{n} against #{m})')
    if optimizers:
        sentence = '; '.join(optimizers)
        text.append(sentence[0].upper() + sentence[1:] + '.')
    decay, fits, effects = [], [], set()  # effects: (decay raised the accuracy, decay raised the final loss)
    for n in compared:
        if hyper[n]['weight_decay'] and (m := without_decay(n)) is not None:
            optimizer, lam = hyper[n]['optimizer'], hyper[n]['weight_decay']
            loss = epochs[n][-1]['train_loss'], epochs[m][-1]['train_loss']
            effects.add((acc[n] > acc[m], loss[0] > loss[1]))
            change = 'raised' if acc[n] > acc[m] else 'lowered'
            decay.append(f'{change} the test accuracy of {optimizer} by {points(acc[n], acc[m])} (λ = {lam:g}, #{n})')
            fits.append(f'{loss[0]:.2g} with it against {loss[1]:.2g} without ({optimizer})')
    if decay:
        verdict = {
            frozenset([(True, True)]): ': it traded fit on the training images for accuracy on new ones',
            frozenset([(False, True)]): ': at this strength it held the network back from fitting, underfitting',
        }.get(frozenset(effects), '')
        text.append(
            f'Weight decay {" and ".join(decay)}; the training loss at the last epoch was {" and ".join(fits)}'
            f'{verdict}.'
        )
    rose, flat = [], []
    for n in compared:
        low, last = min(epochs[n], key=lambda e: e['val_loss']), epochs[n][-1]
        if last['val_loss'] > 1.1 * low['val_loss'] and last['train_loss'] < low['train_loss']:
            rose.append(
                f'#{n} from {low["val_loss"]:.3f} at epoch {low["epoch"]} to {last["val_loss"]:.3f} at epoch '
                f'{last["epoch"]}, its training loss falling to {last["train_loss"]:.2g}'
            )
        else:
            flat.append(f'#{n}')
    stops = ', '.join(
        f'#{n}: {mean_std([r["epoch"] for r in rows[n]], "{:.0f}")} of {len(epochs[n])}' for n in compared
    )
    sentence = f'The best validation epochs fell at {stops}.'
    if rose:
        sentence += (
            f' Training on, the validation loss rose ({"; ".join(rose)}): the network overfitted, the picture of '
            'early stopping, although validation accuracy, which chooses the checkpoint here, kept its plateau.'
        )
        sentence += f' The validation loss of {" and ".join(flat)} stayed within 10% of its lowest.' if flat else ''
    text.append(sentence)
    spread = {n: statistics.stdev(100 * r['accuracy'] for r in rows[n]) for n in compared if len(rows[n]) > 1}
    if len(ranked) > 1 and spread:
        margin, noise = acc[best] - acc[ranked[1]], max(spread.values())
        text.append(
            f'Over {max(len(rows[n]) for n in compared)} seeds, the {points(acc[best], acc[ranked[1]])} margin of '
            f'#{best} over #{ranked[1]} is {"larger than" if margin > noise else "within"} the seed-to-seed spread '
            f'(a standard deviation of up to {noise:.2f} points).'
        )
    elif len(ranked) > 1:
        text.append(
            'Each setting is a single run, so margins of a few tenths of a point cannot be told from chance; '
            '`--seeds 3` measures the spread.'
        )
    extra = [n for n in rows if n not in config.groups['all'] + config.groups['wd']]
    if extra and extra != compared:  # else the first sentence has named the best of them
        top = max(extra, key=acc.get)
        what = differences(hyper[top], config)
        text.append(f'Of the additional experiments, Setting #{top} ({what}) scored best, {acc[top]:.2f}%.')
    sweep = {}  # optimizer: the sweep's setting that scored best with it
    for n in (n for n in config.groups['wd'] if n in rows):
        if acc[n] > acc.get(sweep.get(hyper[n]['optimizer']), -1):
            sweep[hyper[n]['optimizer']] = n
    found = []
    for optimizer, n in sweep.items():
        m = without_decay(n) if hyper[n]['weight_decay'] else None
        versus = f', {points(acc[n], acc[m])} {"above" if acc[n] > acc[m] else "below"} λ = 0' if m else ''
        found.append(f'{hyper[n]["weight_decay"]:g} for {optimizer} ({acc[n]:.2f}%{versus})')
    if found:
        text.append(f'In the weight-decay sweep, the best λ was {", ".join(found)}.')
    return ' '.join(text)
