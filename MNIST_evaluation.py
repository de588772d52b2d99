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


def load_run(folder, device):
    """A run's best-epoch network, its checkpoint and its history; ValueError says what is wrong."""
    path = os.path.join(folder, 'history.json')
    try:
        with open(path, encoding='utf-8') as f:
            history = json.load(f)
        runs.check_history(history, Config.base)
        model = build_model(history['hyperparameters']).to(device)
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f'{path} is missing or damaged; train the setting again') from None
    if not history['best_epoch']:
        raise ValueError(f'{folder} holds no checkpoint: its training diverged in its first epoch')
    return model, runs.load_checkpoint(runs.best_checkpoint(folder, history), model), history


def trained_runs(names, out_dir, device, hint=()):
    """Each trained run of these settings as (name, label, folder, network, checkpoint, history), or None for a run
    that cannot be loaded, once it is said why; the settings in `hint` that are not trained get a hint how to."""
    for name in names:
        folders = runs.run_folders(out_dir, name)
        if not folders and name in hint:
            print(f'Setting {name}: not trained yet; train it with: python MNIST_train.py --setting {name}')
        for folder in folders:
            try:
                model, checkpoint, history = load_run(folder, device)
            except ValueError as e:
                print(f'Setting {name}: skipped: {e}', file=sys.stderr)
                yield None
                continue
            label = f'Setting {name}' + (f' seed {history["seed"]}' if len(folders) > 1 else '')
            yield name, label, folder, model, checkpoint, history


def evaluate_run(model, checkpoint, history, x, y):
    """Test logits and accuracy of a run's best checkpoint, with its epoch and history."""
    logits = predict(model, x)
    accuracy = (logits.argmax(1) == y).float().mean().item()
    return {'epoch': checkpoint['epoch'], 'accuracy': accuracy, 'logits': logits, 'history': history}


def unfinished(name, label, folder, history, args):
    """A sentence for a run that stopped before its last planned epoch, saying how to continue it; else None."""
    trained, planned = len(history['epochs']), history['hyperparameters']['epochs']
    if 'diverged' in history:
        best = history['best_epoch']
        return f'{label}: diverged at epoch {history["diverged"]} of {planned}; its best epoch, {best}, is reported'
    if trained == planned:
        return None
    again = ['python', 'MNIST_train.py', '--setting', str(name), '--epochs', str(planned)]
    if folder != runs.run_dir(args.out_dir, name):  # a seed's run: run I of seeds 0..I
        again += ['--seeds', str(history['seed'] + 1), '--task', str(history['seed'])]
    again += ['--data-dir', str(args.data_dir)] if args.data_dir != Config.data_dir else []
    again += ['--out-dir', str(args.out_dir)] if args.out_dir != Config.out_dir else []
    return f'{label}: trained {trained} of {planned} epochs; continue with: {cli.command_line([*again, "--resume"])}'


def own_digits(args):
    """--image and --draw: the trained setting that validated best (the test chooses nothing) reads your digits."""
    loaded = [run for run in trained_runs(args.setting or list(Config.settings), args.out_dir, args.device) if run]
    if not loaded:
        cli.fail(f'no trained setting in {args.out_dir}; train one first, e.g. python MNIST_train.py --setting 2')
    _, label, _, model, checkpoint, history = max(loaded, key=lambda run: run[-1]['best_val_accuracy'])
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
    rows, notes, skipped = {}, [], 0
    for run in trained_runs(names, args.out_dir, args.device, hint=asked):
        if run is None:
            skipped += 1
            continue
        name, label, folder, *loaded = run
        result = evaluate_run(*loaded, x, y)
        print(f'{label}: accuracy of the {result["epoch"]} epoch trained model: {100 * result["accuracy"]:.2f}%')
        rows.setdefault(name, []).append(result)
        if note := unfinished(name, label, folder, result['history'], args):
            print(note)
            notes.append(note)
    if not rows:
        cli.fail(f'no trained setting in {args.out_dir}; train one first, e.g. python MNIST_train.py --setting 1')
    with atomic.together():  # the report and its pictures, the previous ones or these, whole
        report.write_report(rows, notes, x, y, args.out_dir, Config)
    print(f'Report: {os.path.join(args.out_dir, "report.md")} (and report.csv and the pictures beside it)')
    return 1 if skipped else 0


if __name__ == '__main__':
    sys.exit(cli.run_script(main))
