"""The evaluation report, report.md and report.csv: the assignment's twelve columns and what its runs show."""

import itertools
import json
import os
import statistics

import atomic
import pictures

# How the report writes activations; the others, and initialisations, are capitalized
NAMES = {'relu': 'ReLU', 'leaky_relu': 'Leaky ReLU (0.1)', 'elu': 'ELU', 'maxout': 'Maxout (2)'}


def mean_std(values, fmt):
    if len(values) == 1:
        return fmt.format(values[0])
    return f'{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}'


def trained_as(results):
    """What two rows must share to be compared: epochs planned and trained, the epoch of divergence, the seeds."""
    h = results[0]['history']
    return h['hyperparameters']['epochs'], len(h['epochs']), h.get('diverged'), [r['history']['seed'] for r in results]


def described(results):
    """How runs trained, in words: '2 of 3 epochs, seeds 0, 1'."""
    planned, trained, diverged, seeds = trained_as(results)
    epochs = f'{trained} of {planned} epochs' + (f', diverged at epoch {diverged}' if diverged else '')
    return f'{epochs}, seed{"s" if len(seeds) > 1 else ""} {", ".join(map(str, seeds))}'


def row_runs(results):
    """The runs of a setting that its row averages, all trained alike: finished ones first, then most, then longest."""
    alike = {}
    for r in results:
        alike.setdefault((json.dumps(hyper([r]), sort_keys=True), *trained_as([r])[:3]), []).append(r)
    return max(alike.values(), key=lambda g: (g[0]['state'] == 'finished', len(g), trained_as(g)[1]))


def table_row(results):
    """The assignment's twelve columns for one setting's runs, trained alike: mean ± std over seeds and how many,
    where there are several; for runs that stopped early, the epochs they trained of those planned."""
    h = results[0]['history']['hyperparameters']
    trained, seeds = len(results[0]['history']['epochs']), len(results)
    times = mean_std([100 * r['history']['training_time'] / trained for r in results], '{:.1f} s')
    return {
        'Batch_size': h['batch_size'],
        'Activation function': NAMES.get(h['activation'], h['activation'].capitalize()),
        '# of layers': h['layers'],
        'Layer size': h['width'],
        'Epoch': h['epochs'] if results[0]['state'] == 'finished' else f'{trained} of {h["epochs"]}',
        'Weight initialization': h['init'].capitalize(),
        'Optimizer': h['optimizer'],
        'Learning rate': f'{h["lr"]:g}',
        'Weight decay': f'{h["weight_decay"]:g}',
        '100 epoch training time': times + ('' if trained == 100 else f' (from {trained} epochs)'),
        'Early stopping epoch': mean_std([r['epoch'] for r in results], '{:.0f}'),
        'Accuracy': mean_std([100 * r['accuracy'] for r in results], '{:.2f}%')
        + (f' ({seeds} seeds)' if seeds > 1 else ''),
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
    found = {}  # optimizer -> {lambda: the runs of its row}
    for name in (n for n in config.groups['wd'] if n in rows):
        found.setdefault(hyper(rows[name])['optimizer'], {})[hyper(rows[name])['weight_decay']] = rows[name]
    pictures.plot_weight_decay(found, os.path.join(out_dir, 'weight_decay.png'))
    table = {
        f'{lam:g}': {opt: table_row(p[lam])['Accuracy'] if lam in p else '' for opt, p in found.items()}
        for lam in sorted({lam for points in found.values() for lam in points})
    }
    plot = '![Weight decay sweep](weight_decay.png)'
    return f'## Weight decay sweep (test accuracy)\n\n{markdown_table(table, corner="λ")}\n\n{plot}\n\n'


def write_report(rows, notes, x, y, out_dir, config):
    """report.md and report.csv with the assignment's columns, and their pictures; `rows` holds each setting's runs
    that trained alike, and `notes` name the runs left out of them or not finished."""
    table = {n: table_row(r) for n, r in rows.items()}
    assignment = {f'Setting #{n}': table[n] for n in rows if n in config.groups['all']}
    extra = {
        f'Setting #{n}': {'Differs from Setting #2': differences(hyper(r), config)} | table[n]
        for n, r in rows.items()
        if n not in config.groups['all'] + config.groups['wd']
    }
    best, claims = summary(rows, config)
    title = shown(best, rows[best])
    body = '# MNIST 4-layer perceptron: evaluation report\n\n'
    if assignment:
        plot = '![Validation accuracy](val_accuracy.png)'
        body += f'{markdown_table(assignment)}\n\n**Validation dataset accuracy plot**\n\n{plot}\n\n'
    if notes:
        body += '**Runs not finished or left out of the table**\n\n' + ''.join(f'- {n}\n' for n in notes) + '\n'
    curves = '![Training and validation loss](learning_curves.png)'
    body += f'## Summary of results\n\n{claims}\n\n**Learning curves**\n\n{curves}\n\n'
    body += f'**Where {title} goes wrong on the test split**\n\n'
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
    panels = {shown(n, r): r[0]['history'] for n, r in rows.items() if n in config.groups['all'] or not assignment}
    pictures.plot_val_accuracy(panels, os.path.join(out_dir, 'val_accuracy.png'))
    pictures.plot_learning_curves(panels, os.path.join(out_dir, 'learning_curves.png'))
    pictures.plot_mistakes(rows[best][0], x, y, title, out_dir)


def shown(name, results):
    """The title of the pictures of a setting's row, which show its first run."""
    return f'Setting #{name}' + (f' seed {results[0]["history"]["seed"]}' if len(results) > 1 else '')


def hyper(results):
    return results[0]['history']['hyperparameters']


def accuracy(results):
    """A row's mean test accuracy in percent, rounded as the table writes it."""
    return round(statistics.mean(100 * r['accuracy'] for r in results), 2)


def points(a, b):
    return f'{abs(a - b):.2f} point' + ('' if f'{abs(a - b):.2f}' == '1.00' else 's')


def alike(names, rows):
    """The settings that trained as most of these did (then the longest), to compare, and a line on each other."""
    plans = [trained_as(rows[n]) for n in names]
    common = max(plans, key=lambda p: (plans.count(p), p[1], len(p[3])))
    kept = [n for n, p in zip(names, plans) if p == common]
    refused = f'is not compared with {", ".join(f"#{n}" for n in kept)} ({described(rows[kept[0]])})'
    return kept, [f'Setting #{n} ({described(rows[n])}) {refused}' for n, p in zip(names, plans) if p != common]


def lead(names, rows, form='Setting #{name}', ref=None, margin=True):
    """The best of these settings, written as `form`, and its margin over `ref` (else the next best), or the tie."""
    ranked = sorted(names, key=lambda n: accuracy(rows[n]), reverse=True)
    best, a = ranked[0], accuracy(rows[ranked[0]])
    if len(ranked) == 1:
        return f'{form.format(name=best, **hyper(rows[best]))} reached {a:.2f}%'
    other = ranked[1] if ref in (None, best) or accuracy(rows[ranked[1]]) == a else ref
    b, (x, y) = accuracy(rows[other]), (form.format(name=n, **hyper(rows[n])) for n in (best, other))
    if a == b:
        return f'{x} and {y} tied at {a:.2f}%'
    if not margin:
        return f'{x} led with {a:.2f}%, ahead of {y}'
    return f'{x} beat {y} by {points(a, b)}' if len(names) == 2 else f'{x} led with {a:.2f}%, {points(a, b)} above {y}'


def versus(names, rows, keys, context, form):
    """A line on each group of these settings that differ in `keys` only: its best against its first."""
    groups = {}
    for n in names:
        rest = {k: v for k, v in hyper(rows[n]).items() if k not in keys}
        groups.setdefault(json.dumps(rest, sort_keys=True), []).append(n)
    return [
        f'{context.format(**hyper(rows[g[0]]))}, {lead(g, rows, form, g[0])}' for g in groups.values() if len(g) > 1
    ]


def weight_decay(names, rows):
    """What weight decay did to the test accuracy where two settings differ in it only, one without; underfitting
    where it lowered the accuracy and raised the last epoch's training loss (mean over seeds)."""
    lines = []
    for n, m in itertools.permutations(names, 2):
        h, h0 = hyper(rows[n]), hyper(rows[m])
        if {k for k in h if h[k] != h0[k]} == {'weight_decay'} and not h0['weight_decay']:
            a, b = accuracy(rows[n]), accuracy(rows[m])
            loss = [f'{statistics.mean(r["history"]["epochs"][-1]["train_loss"] for r in rows[k]):.2g}' for k in (n, m)]
            score = f'scored {points(a, b)} {"above" if a > b else "below"}' if a != b else f'tied at {a:.2f}% with'
            under = f', with a final training loss of {loss[0]} against {loss[1]}: underfitting'
            under = under if a < b and float(loss[0]) > float(loss[1]) else ''
            lines.append(f'With {h["optimizer"]}, λ = {h["weight_decay"]:g} (#{n}) {score} λ = 0 (#{m}){under}')
    return lines


def overfitting(names, rows):
    """The settings whose every run ended with the validation loss 10% above its lowest, the training loss lower."""

    def overfitted(epochs):
        low = min(epochs, key=lambda e: e['val_loss'])
        return epochs[-1]['val_loss'] > 1.1 * low['val_loss'] and epochs[-1]['train_loss'] < low['train_loss']

    found = ', '.join(f'#{n}' for n in names if all(overfitted(r['history']['epochs']) for r in rows[n]))
    return [f'The validation loss rose while the training loss fell, overfitting, in {found}'] if found else []


def spread(names, rows):
    """Whether the lead of the best setting over the next is more than the spread between seeds."""
    ranked = sorted(names, key=lambda n: accuracy(rows[n]), reverse=True)
    if len(ranked) < 2 or accuracy(rows[ranked[0]]) == accuracy(rows[ranked[1]]):
        return []
    (n, a), (m, b) = ((k, accuracy(rows[k])) for k in ranked[:2])
    if len(rows[n]) == 1:  # the size of the lead is in the line that compares the two
        chance = f'In single runs, the lead of #{n} over #{m} may be chance; `--seeds 3` measures the spread'
        return [chance] if a - b < 1 else []
    sd = max(round(statistics.stdev(100 * r['accuracy'] for r in rows[k]), 2) for k in (n, m))
    within = 'within' if round(a - b, 2) <= sd else 'more than'
    lead = f'the lead of #{n} over #{m}, {points(a, b)},'
    return [f'Over {len(rows[n])} seeds, {lead} is {within} the spread between them (± up to {sd:.2f}%)']


def summary(rows, config):
    """The best setting and the results summary, the sheet's "[결과 정리]": a claim a line where the runs show it,
    comparing settings that trained alike and differ in what the line names, naming those it cannot compare."""
    four, wd = config.groups['all'], config.groups['wd']
    extras = [n for n in rows if n not in four + wd]
    main, sweep, lines = [n for n in rows if n in four] or extras, [n for n in wd if n in rows], []
    if main:
        main, refused = alike(main, rows)
        optimizers = versus(main, rows, {'optimizer', 'lr'}, 'At λ = {weight_decay:g}', '{optimizer} (#{name})')
        compared = [*optimizers, *weight_decay(main, rows)]
        top = sorted(main, key=lambda n: accuracy(rows[n]), reverse=True)[:2]
        said = any(all(f'(#{n})' in line for n in top) for line in compared)  # the lead's size, which the lead omits
        among = f'Of the settings trained for {described(rows[main[0]])}, ' if refused else ''  # not the table's best
        lines += [] if len(main) == 2 and said else [among + lead(main, rows, margin=not said)]
        lines += [*compared, *overfitting(main, rows), *spread(main, rows), *refused]
    if extras and main[0] in four:
        kept, refused = alike(extras, rows)
        lines += [f'Of the additional experiments, {lead(kept, rows)}', *refused]
    if sweep:
        kept, refused = alike(sweep, rows)
        zero = {hyper(rows[n])['optimizer'] for n in kept if not hyper(rows[n])['weight_decay']}
        alone = [n for n in kept if hyper(rows[n])['optimizer'] not in zero]
        refused += [f'Setting #{n} is not compared with λ = 0, which the sweep lacks for it' for n in alone]
        kept = [n for n in kept if n not in alone]
        main = main or kept  # where the sweep alone is trained, the best of what it compares
        context = 'In the weight-decay sweep with {optimizer}'
        lines += [*versus(kept, rows, {'weight_decay'}, context, 'λ = {weight_decay:g}'), *refused]
    return max(main or rows, key=lambda n: accuracy(rows[n])), '\n'.join(f'- {line}.' for line in lines)
