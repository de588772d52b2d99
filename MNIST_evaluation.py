"""Measure each trained setting's best checkpoint on the MNIST test split and write the evaluation report.

python MNIST_evaluation.py                 # every trained setting under saved_model/
python MNIST_evaluation.py --setting 2     # one setting
python MNIST_evaluation.py --image my.png  # your own digits: image files or folders of them
python MNIST_evaluation.py --draw          # draw digits with the mouse
"""

import json
import os
import sys

import atomic
import cli
import digits
import report
import runs
from MNIST_model import Config, build_model, data_load, predict


def evaluate_run(model, checkpoint, history, x, y):
    """Test logits and accuracy of a run's best checkpoint, with its epoch and history."""
    logits = predict(model, x)
    accuracy = (logits.argmax(1) == y).float().mean().item()
    return {'epoch': checkpoint['epoch'], 'accuracy': accuracy, 'logits': logits, 'history': history}


def load_run(folder, device, before=None):
    """A run's best-epoch network, checkpoint and history (None, None, history before a best epoch); ValueError says
    what is wrong. A run in training may replace the best checkpoint, of epoch `before`, as it is read: read again."""
    path = os.path.join(folder, 'history.json')
    try:
        with open(path, encoding='utf-8') as f:
            history = json.load(f)
        runs.check_history(history, Config.base)
        model = build_model(history['hyperparameters']).to(device)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):  # RuntimeError: a network of no possible size
        raise ValueError(
            f"{path} is missing or damaged; the run's own command, with --resume, writes it again from last.pth"
        ) from None
    if not history['best_epoch']:
        return None, None, history
    try:
        return model, runs.load_checkpoint(runs.best_checkpoint(folder, history), model), history
    except ValueError:
        if history['best_epoch'] == before:
            raise
        return load_run(folder, device, history['best_epoch'])


def trained_runs(names, args, hint=()):
    """Each run of these settings as (name, label, folder, loaded): loaded as load_run returns it, or the ValueError
    that says why it cannot be, once said; the settings in `hint` that are not trained get a hint how to."""
    for name in names:
        folders = runs.run_folders(args.out_dir, name)
        if not folders and runs.training(runs.run_dir(args.out_dir, name)):
            print(f'Setting {name}: still training, no epoch done yet')
        elif not folders and name in hint:
            print(f'Setting {name}: not trained yet; train it with: {train_command(args, name)}')
        for folder in folders:
            seed = '' if folder == runs.run_dir(args.out_dir, name) else f' seed {folder.rsplit("_", 1)[1]}'
            try:
                loaded = load_run(folder, args.device)
            except ValueError as e:
                print(f'Setting {name}: skipped: {e}', file=sys.stderr)
                loaded = e
            yield name, f'Setting {name}{seed}', folder, loaded


def train_command(args, name, *options):
    """The trainer's command for a setting, with this evaluation's data and output folders where not the default."""
    words = ['python', 'MNIST_train.py', '--setting', str(name), *options]
    words += ['--data-dir', str(args.data_dir)] if args.data_dir != Config.data_dir else []
    words += ['--out-dir', str(args.out_dir)] if args.out_dir != Config.out_dir else []
    return cli.command_line(words)


def none_read(args, skipped, name):
    """Stop, as no run could be read: those there are were skipped (a line said why each), or none is trained."""
    if skipped:
        cli.fail(f'no run in {args.out_dir} could be evaluated; the lines above say why')
    cli.fail(f'no trained setting in {args.out_dir}; train one first, e.g. {train_command(args, name)}')


def note(name, label, folder, history, result, row, args):
    """A line on a run that is unfinished (still training, stopped: how to continue, diverged) or whose `result` its
    setting's `row` leaves out of the table; else None."""
    trained, planned, seed = len(history['epochs']), history['hyperparameters']['epochs'], history['seed']
    state, left_out = f'trained {trained} of {planned} epochs', result and all(result is not r for r in row)
    left = f'; left out of the table (Setting #{name} there: {report.described(row)})' if left_out else ''
    if 'diverged' in history:
        best = f'; its best epoch, {history["best_epoch"]}, is reported' if result and not left_out else ''
        return f'{label}: diverged at epoch {history["diverged"]} of {planned}{left}{best}'
    if runs.training(folder):  # also a finished run that --resume extends, whose history has the old plan
        return f'{label}: still training, {trained} of {planned} epochs done{left}'
    if trained == planned:
        return f'{label}: {state}{left}' if left_out else None
    again = ['--seed', str(seed)] if seed != Config.seed else []
    if folder != runs.run_dir(args.out_dir, name):  # a seed's run: run I of seeds 0..I
        again = ['--seeds', str(seed + 1), '--task', str(seed)]
    command = train_command(args, name, '--epochs', str(planned), *again, '--resume')
    return f'{label}: {state}{left}; continue with: {command}'


def own_digits(args):
    """--image and --draw: the trained setting that validated best (the test chooses nothing) reads your digits."""
    found = list(trained_runs(args.setting or list(Config.settings), args))
    loaded = [(label, *run) for _, label, _, run in found if not isinstance(run, ValueError) and run[0]]
    if not loaded:
        none_read(args, any(isinstance(run, ValueError) for *_, run in found), args.setting[0] if args.setting else 2)
    label, model, checkpoint, history = max(loaded, key=lambda run: run[-1]['best_val_accuracy'])
    accuracy = 100 * history['best_val_accuracy']
    print(f'Reading with {label} (its epoch {checkpoint["epoch"]} checkpoint, validation accuracy {accuracy:.2f}%)')

    def read(x):  # the ten probabilities of each digit
        return predict(model, x).softmax(1)

    if args.image:
        return 1 if digits.read_images(args.image, read, args.out_dir) else 0
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
    for name, label, folder, loaded in trained_runs(names, args, hint=asked):
        if isinstance(loaded, ValueError):
            skipped.append(f'Setting {name}: skipped: {loaded}')
            continue
        result = evaluate_run(*loaded, x, y) if loaded[0] else None
        if result:
            print(f'{label}: accuracy of the {result["epoch"]} epoch trained model: {100 * result["accuracy"]:.2f}%')
            found.setdefault(name, []).append(result)
        seen.append((name, label, folder, loaded[2], result))
    rows = {name: report.row_runs(results) for name, results in found.items()}
    notes = [line for run in seen if (line := note(*run, rows.get(run[0]), args))]
    for line in notes:
        print(line)
    if not found:
        none_read(args, skipped, names[0])
    with atomic.together():  # the report and its pictures, the previous ones or these, whole
        report.write_report(rows, skipped + notes, x, y, args.out_dir, Config)
    print(f'Report: {os.path.join(args.out_dir, "report.md")} (and report.csv and the pictures beside it)')
    return 1 if skipped else 0


if __name__ == '__main__':
    sys.exit(cli.run_script(main))
