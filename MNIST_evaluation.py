"""Measure each trained setting's best checkpoint on the MNIST test split and write the evaluation report.

python MNIST_evaluation.py                 # every trained setting under saved_model/
python MNIST_evaluation.py --setting 2     # one setting
python MNIST_evaluation.py --image my.png  # your own digits: image files or folders of them
python MNIST_evaluation.py --draw          # draw digits with the mouse
"""

import functools
import os
import sys

import atomic
import cli
import digits
import report
import runs
from MNIST_model import Config, build_model, data_load, predict


def evaluate_run(model, checkpoint, run, x, y):
    """Test logits and accuracy of a run's best checkpoint, with its epoch, history and state."""
    logits = predict(model, x)
    accuracy = (logits.argmax(1) == y).float().mean().item()
    return dict(epoch=checkpoint['epoch'], accuracy=accuracy, logits=logits, history=run.history, state=run.state)


def load_run(run, device):
    """A run's best-epoch network, checkpoint and run, read again where a training replaced its best checkpoint."""
    try:
        model = build_model(run.history['hyperparameters']).to(device)
    except RuntimeError as e:  # a network of no possible size
        raise ValueError(f'{os.path.join(run.folder, "history.json")} is damaged ({e})') from None
    try:
        return model, runs.load_checkpoint(run.best, model), run
    except (OSError, ValueError):
        now = runs.read_run(run.folder, Config.base, run.seed)
        if now.best in (None, run.best):
            raise
        return load_run(now, device)


def trained_runs(names, args, hint=()):
    """Each run of these settings as (name, label, run, loaded): loaded as load_run returns it, None before a best
    epoch, or the error that says why not, once said; the untrained settings in `hint` get a hint how to train."""
    found = [(name, run) for name in names for run in runs.runs_of(args.out_dir, name, Config.base)]
    plans = [run.planned for _, run in found if run.planned]
    seeds = [run.seed for _, run in found if run.seed is not None]
    epochs = max(plans, key=plans.count) if plans else None  # the plan of most runs here
    plan = {'epochs': epochs, 'seeds': max(seeds) + 1 if seeds else None}
    hint = hint if any(run.state != 'absent' for _, run in found) else ()  # else one line says it all
    for name, run in found:
        label = f'Setting {name}' + ('' if run.seed is None else f' seed {run.seed}')
        loaded = None
        if run.state == 'absent' and name in hint:  # trained as the other runs here were, as they would be compared
            print(f'Setting {name}: not trained yet; train it with: {cli.train_command(args, name, **plan)}')
        elif run.state in ('damaged', 'unreadable'):
            loaded = ValueError(runs.advice(run, functools.partial(run_command, args, name, run)))
        elif run.best:
            try:
                loaded = load_run(run, args.device)
            except ValueError as e:
                loaded = ValueError(f'{e}; train it again with: {run_command(args, name, run, "--force")}')
            except OSError as e:
                loaded = ValueError(runs.unreadable(e))
        if isinstance(loaded, ValueError):
            print(f'{label}: skipped: {loaded}', file=sys.stderr)
        if run.state != 'absent':
            yield name, label, run, loaded


def run_command(args, name, run, *options):
    """The trainer's command for `run` alone, with `options`: its planned epochs, its seed, these folders."""
    seed = run.history['seed'] if run.seed is None and run.history else run.seed
    return cli.train_command(args, name, *options, epochs=run.planned, seed=seed, seeded=run.seed is not None)


def none_read(args, skipped, seen, name):
    """Stop, as no run could be read: each was skipped or has no epoch yet (a line said so), or none is trained."""
    if skipped:
        cli.fail(f'no run in {args.out_dir} could be evaluated; the lines above say why')
    if seen:
        cli.fail(f'no run in {args.out_dir} has finished an epoch yet; the lines above say where each stands')
    if args.setting:
        asked = ', '.join(map(str, args.setting))
        cli.fail(f'Setting {asked} has no run in {args.out_dir}; train it first: {cli.train_command(args, name)}')
    cli.fail(f'no trained setting in {args.out_dir}; train one first, e.g. {cli.train_command(args, name)}')


def note(name, label, run, result, row, args):
    """A line on a run that is not finished, or whose `result` its setting's `row` leaves out of its table; or None."""
    done = f'{run.trained} of {run.planned} epochs'
    left_out = result and all(result is not r for r in row)
    left = f'; left out of the table (Setting #{name} there: {report.described(row)})' if left_out else ''
    if run.state == 'waiting':
        return f'{label}: waiting its turn in a running command' + (f', {done} done' if run.history else '')
    if run.state == 'training':
        return f'{label}: training, {done} done{left}'
    if run.state == 'diverged':
        best = f'; its best epoch, {run.history["best_epoch"]}, is reported' if result and not left_out else ''
        return f'{label}: diverged at epoch {run.history["diverged"]} of {run.planned}{left}{best}'
    if run.state == 'stopped':
        return f'{label}: trained {done}{left}; continue with: {run_command(args, name, run, "--resume")}'
    return f'{label}: trained {done}{left}' if left_out else None


def own_digits(args):
    """--image and --draw: the trained setting that validated best (the test chooses nothing) reads your digits."""
    found = list(trained_runs(args.setting or list(Config.settings), args))
    loaded = [(label, *loaded) for _, label, _, loaded in found if loaded and not isinstance(loaded, ValueError)]
    skipped = any(isinstance(loaded, ValueError) for *_, loaded in found)
    if not loaded:
        none_read(args, skipped, found, args.setting[0] if args.setting else 2)
    label, model, checkpoint, run = max(loaded, key=lambda loaded: loaded[-1].history['best_val_accuracy'])
    accuracy = 100 * run.history['best_val_accuracy']
    print(f'Reading with {label} (its epoch {checkpoint["epoch"]} checkpoint, validation accuracy {accuracy:.2f}%)')

    def read(x):  # the ten probabilities of each digit
        return predict(model, x).softmax(1)

    if args.image:
        return 1 if digits.read_images(args.image, read, args.out_dir) or skipped else 0
    try:
        digits.open_window(read, f'{label}: draw a digit with the mouse')
    except ValueError as err:
        cli.fail(err)
    return 0


def main(argv=None):
    p = cli.common_parser(
        Config,
        'Measure each trained setting on the MNIST test split and write report.md, report.csv and their pictures.',
        help='setting(s) to evaluate (default: every trained one); with --image or --draw, the setting(s) to '
        'choose from (default: the trained one with the best validation accuracy)',
    )
    own = p.add_mutually_exclusive_group()
    own.add_argument('--image', nargs='+', metavar='PATH', help='read your own digits: image files or folders')
    own.add_argument('--draw', action='store_true', help='draw digits with the mouse in a window')
    args = p.parse_args(argv)
    cli.start_process(window=args.draw)
    if args.image or args.draw:
        return own_digits(args)
    names = args.setting or list(Config.settings)
    asked = names if args.setting else Config.groups['all']  # untrained ones that are worth a hint
    try:
        x, y = data_load(args.data_dir, train=False)  # on the CPU, where predict() returns the logits
    except ValueError as err:
        cli.fail(err)
    found, seen, skipped = {}, [], []
    for name, label, run, loaded in trained_runs(names, args, hint=asked):
        if isinstance(loaded, ValueError):
            skipped.append(f'{label}: skipped: {loaded}')
            continue
        result = evaluate_run(*loaded, x, y) if loaded else None
        if result:
            print(f'{label}: accuracy of the {result["epoch"]} epoch trained model: {100 * result["accuracy"]:.2f}%')
            found.setdefault(name, []).append(result)
        seen.append((name, label, loaded[2] if loaded else run, result))  # as read again, where it was
    rows = {name: report.row_runs(results) for name, results in found.items()}
    notes = [line for run in seen if (line := note(*run, rows.get(run[0]), args))]
    for line in notes:
        print(line)
    if not found:
        none_read(args, skipped, seen, names[0] if args.setting else 2)
    with atomic.together():  # the report and its pictures, the previous ones or these, whole
        report.write_report(rows, skipped + notes, x, y, args.out_dir, Config)
    print(f'Report: {os.path.join(args.out_dir, "report.md")} (and report.csv and the pictures beside it)')
    return 1 if skipped else 0


if __name__ == '__main__':
    sys.exit(cli.run_script(main))
