"""Train settings of the MNIST 4-layer perceptron and keep each one's best validation epoch.

python MNIST_train.py --setting 2        # one row of Config.settings (MNIST_model.py)
python MNIST_train.py --setting all      # the assignment's four settings
"""

import contextlib
import functools
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import atomic
import cli
import pictures
import runs
from MNIST_model import Config, build_model, data_load, generate_batch, predict, setting
from warps import distort

OPTIMIZERS = {'Adadelta': torch.optim.Adadelta, 'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW}


def train(model, optimizer, scheduler, x, y, hyper):
    """One epoch over the training images; returns the training loss averaged over all its batches."""
    model.train()
    losses = []
    for xb, yb in generate_batch(x, y, hyper['batch_size']):
        if hyper['distort'] or hyper['elastic']:
            xb = distort(xb, hyper)
        loss = F.cross_entropy(model(xb, straightened=True), yb, label_smoothing=hyper['label_smoothing'])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler:
            scheduler.step()
        losses.append(loss.detach())
    return torch.stack(losses).mean().item()


def validate(model, x, y):
    """Loss and accuracy on the (straightened) validation images, in eval mode without gradients."""
    logits, y = predict(model, x, straightened=True), y.cpu()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def make_optimizer(model, hyper, steps_per_epoch):
    """The setting's optimizer, with its one-kernel update where there is one, and its lr schedule."""
    fused = hyper['optimizer'] != 'Adadelta' and next(model.parameters()).device.type in ('cpu', 'cuda')
    optimizer = OPTIMIZERS[hyper['optimizer']](
        model.parameters(), lr=hyper['lr'], weight_decay=hyper['weight_decay'], **({'fused': True} if fused else {})
    )
    if hyper['schedule'] == 'onecycle':
        return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, hyper['lr'], hyper['epochs'] * steps_per_epoch)
    return optimizer, None


def split_indices(n):
    """Fixed training and validation indices of the n training images, the same for every seed and setting."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(Config.split_seed))
    n_val = round(n * Config.val_fraction)
    return perm[n_val:], perm[:n_val]


@functools.cache
def training_data(data_dir, device):
    """The training and validation splits as tensors on the device, read once per process."""
    try:
        x, y = data_load(data_dir, train=True)  # the test split is read by evaluation only
    except ValueError as e:
        cli.fail(e)
    return [(x[i].to(device), y[i].to(device)) for i in split_indices(len(x))]


def train_setting(name, seed, folder, args):
    """Train one setting with one seed; returns False if it could not be resumed or diverged."""
    (x_train, y_train), (x_val, y_val) = training_data(args.data_dir, args.device)
    hyper = {**setting(name), **({'epochs': args.epochs} if args.epochs else {})}
    torch.manual_seed(seed)
    model = build_model(hyper).to(args.device)
    x_train, x_val = model.straighten(x_train), model.straighten(x_val)  # deskewed once per run, if at all
    model.fit_input(x_train)
    optimizer, scheduler = make_optimizer(model, hyper, math.ceil(len(x_train) / hyper['batch_size']))
    history = dict(setting=str(name), hyperparameters=hyper, seed=seed, device=str(args.device), epochs=[])
    history.update(threads=torch.get_num_threads(), best_epoch=0, best_val_accuracy=0.0, training_time=0.0)
    if args.resume:
        try:
            history = runs.load_state(folder, model, optimizer, scheduler, history)
        except ValueError as e:
            print(f'error: {e}; start it over with: {run_command(args, name, seed, "--force")}', file=sys.stderr)
            return False
        except OSError as e:
            print(f'error: {runs.unreadable(e)}', file=sys.stderr)
            return False
    runs.save_history(folder, history)  # the report names a run stopped in its first epoch; --resume mends a history
    label = run_label(args, name, seed)
    for epoch in range(len(history['epochs']) + 1, hyper['epochs'] + 1):
        start = time.perf_counter()
        train_loss = train(model, optimizer, scheduler, x_train, y_train, hyper)
        val_loss, val_acc = validate(model, x_val, y_val)
        seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            print(
                f'{label}: training diverged at epoch {epoch} (loss {train_loss}); stopped, '
                f'keeping the best checkpoint so far (epoch {history["best_epoch"]})',
                file=sys.stderr,
            )
            runs.save_history(folder, {**history, 'diverged': epoch})  # for the report; --resume starts before it
            return False
        row = dict(epoch=epoch, train_loss=train_loss, val_loss=val_loss, val_accuracy=val_acc, seconds=seconds)
        history['epochs'].append(row)
        history['training_time'] += seconds
        improved = val_acc > history['best_val_accuracy']
        if improved:
            history['best_epoch'], history['best_val_accuracy'] = epoch, val_acc
            # the checkpoint that the evaluation reloads; the previous one goes once the state after this epoch is saved
            best = dict(epoch=epoch, model_state_dict=model.state_dict(), hyperparameters=hyper, val_accuracy=val_acc)
            atomic.save_torch(runs.best_checkpoint(folder, epoch), best)
        with atomic.signals_held():  # a stop waits until the epoch is saved and its line printed
            runs.save_state(folder, model, optimizer, scheduler, history)
            print(
                f'{label} | epoch {epoch:3d}/{hyper["epochs"]} | train loss {train_loss:.4f} | '
                f'val loss {val_loss:.4f} | val acc {100 * val_acc:.2f}% | {seconds:.2f} s' + (' *' if improved else '')
            )
    if history['best_epoch']:
        pictures.plot_val_accuracy({label: history}, os.path.join(folder, 'val_accuracy.png'))
        print(
            f'{label}: best epoch {history["best_epoch"]} (val acc {100 * history["best_val_accuracy"]:.2f}%), '
            f'{len(history["epochs"])} epochs in {history["training_time"]:.1f} s -> '
            f'{runs.best_checkpoint(folder, history["best_epoch"])}'
        )
    return True


def train_run(name, seed, folder, args):
    """A run of this command, marked as training while it trains: runs.read_run tells it from a run waiting its turn."""
    with runs.training(folder):
        return train_setting(name, seed, folder, args)


def main(argv=None):
    cli.start_process()
    p = cli.common_parser(
        Config,
        'Train settings of the MNIST 4-layer perceptron; each setting is a row of Config.settings in MNIST_model.py.',
        required=True,
        help="setting to train: a row of Config.settings (1-4: the assignment's, best), all (1-4), extra (5-13) or "
        'wd (the weight-decay sweep)',
    )
    p.add_argument('--epochs', type=cli.count(1), help="epochs to train (default: the setting's, 100; best: 300)")
    one_or_many = p.add_mutually_exclusive_group()
    one_or_many.add_argument('--seed', type=cli.count(0), default=Config.seed, help='random seed (default %(default)s)')
    one_or_many.add_argument(
        '--seeds', type=cli.count(1), metavar='K', help='train seeds 0..K-1, each into setting_N/seed_S/'
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument('--resume', action='store_true', help='continue after the last finished epoch (or start)')
    again.add_argument('--force', action='store_true', help='start over these runs (without --task: their settings)')
    p.add_argument('--jobs', type=cli.count(1), default=1, metavar='N', help='train N runs at once, sharing the cores')
    p.add_argument('--task', type=cli.count(0), metavar='I', help='train only run I (from 0): a job array task')
    args = p.parse_args(argv)
    seeds = range(args.seeds) if args.seeds else [args.seed]
    trainings = [(n, s, runs.run_dir(args.out_dir, n, s if args.seeds else None)) for n in args.setting for s in seeds]
    if args.task is not None:  # settings x seeds, in this order
        if args.task >= len(trainings):
            p.error(f'--task {args.task}: these settings and seeds make runs 0 to {len(trainings) - 1}')
        trainings = trainings[args.task : args.task + 1]
    training_data(args.data_dir, args.device)  # read once, before any folder is touched; forked workers share it
    if args.force and args.task is None:  # the command trains its settings whole
        try:
            runs.start_over(*dict.fromkeys(runs.run_dir(args.out_dir, name) for name, _, _ in trainings))
        except ValueError as e:
            cli.fail(e)
    with contextlib.ExitStack() as locks:  # each run's lock, released however this ends
        claimed, refused, said = [], [], []
        for name, seed, folder in trainings:  # a run refused is named, and the others train
            try:
                held = claim(args, name, seed, folder)
                if held:
                    locks.enter_context(held)
                    claimed.append((name, seed, folder))
            except ValueError as e:
                if f'{e}' not in said:  # a sentence on a setting is said once for all its seeds
                    print(f'error: {e}', file=sys.stderr)
                said.append(f'{e}')
                refused.append(run_label(args, name, seed))
        trained = cli.run_all(functools.partial(train_run, args=args), claimed, args.jobs, args.device)
    if refused and claimed:  # said again after the others' lines
        print(f'error: not trained: {", ".join(refused)}; the first lines say why', file=sys.stderr)
    return 0 if trained and not refused else 1


def claim(args, name, seed, folder):
    """Lock a run of this command if it may train (runs.open_run): the lock, None where it is finished, or ValueError
    why not; a run it leaves is not locked, not to be taken for one waiting its turn."""
    held = runs.lock(folder)
    try:
        run = runs.read_run(folder, Config.base, seed if args.seeds else None)
        epochs = args.epochs or setting(name)['epochs']
        again = functools.partial(run_command, args, name, seed)
        if not runs.open_run(runs.run_dir(args.out_dir, name), run, args.resume, args.force, epochs, again):
            print(f'{run_label(args, name, seed)}: finished, {epochs} of {epochs} epochs')
            held.close()
            return None
    except ValueError:
        held.close()
        raise
    return held


def run_label(args, name, seed):
    return f'Setting {name}' + (f' seed {seed}' if args.seeds else '')


def run_command(args, name, seed, *options, whole=False):
    """The command that trains this command's run of `name` and `seed` alone (or, `whole`, the setting's every run)."""
    seeds = {'seeds': args.seeds} if whole else {'seeded': bool(args.seeds)}
    return cli.train_command(args, name, *options, epochs=args.epochs, seed=seed, **seeds)


if __name__ == '__main__':
    again = [a for a in sys.argv[1:] if a != '--force'] + ([] if '--resume' in sys.argv else ['--resume'])
    resume = cli.command_line(['python', 'MNIST_train.py', *again])
    sys.exit(cli.run_script(main, f'Interrupted; finished epochs are saved. Continue with: {resume}', trains=True))
