"""Train settings of the MNIST 4-layer perceptron and keep each one's best validation epoch.

python MNIST_train.py --setting 2        # one row of Config.settings (MNIST_model.py)
python MNIST_train.py --setting all      # the assignment's four settings
"""

import argparse
import functools
import glob
import json
import math
import multiprocessing
import os
import signal
import sys
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from MNIST_model import (
    Config,
    add_common_args,
    best_checkpoint,
    build_model,
    data_load,
    fail,
    generate_batch,
    load_checkpoint,
    plot_val_accuracy,
    predict,
    run_dir,
    run_script,
    save_atomic,
    save_figure,
    setting,
    start_process,
    warp,
)

OPTIMIZERS = {'Adadelta': torch.optim.Adadelta, 'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW}
RESULTS = ('last.pth', 'history.json', 'val_accuracy.png', 'epoch_*.pth')


def count(minimum):
    """argparse type: a whole number of at least `minimum`."""

    def parse(text):
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f'{text!r} is not a whole number of at least {minimum}')
        return int(text)

    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(
        description='Train settings of the MNIST 4-layer perceptron; '
        'each setting is a row of Config.settings in MNIST_model.py.'
    )
    add_common_args(
        p,
        required=True,
        setting_help='setting to train: a row of Config.settings (1-4 are the '
        "assignment's, 5-13 and 'best' extra experiments), 'all' for 1-4, 'extra' for 5-13 or 'wd' "
        'for the weight-decay sweep',
    )
    p.add_argument('--epochs', type=count(1), help="epochs to train (default: the setting's, 100)")
    p.add_argument('--seed', type=count(0), default=Config.seed, help=f'random seed (default {Config.seed})')
    p.add_argument(
        '--seeds',
        type=count(1),
        metavar='K',
        help='train seeds 0..K-1, each into setting_N/seed_S/, for mean and spread in the report',
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument('--resume', action='store_true', help='continue after the last finished epoch')
    again.add_argument('--force', action='store_true', help='delete earlier results of these settings first')
    p.add_argument(
        '--jobs',
        type=count(1),
        default=1,
        metavar='N',
        help='train N runs (settings x seeds) at once in worker processes, sharing the cores (default 1)',
    )
    return p.parse_args(argv)


def split_indices(n):
    """Fixed training and validation indices of the n training images, the same for every seed and setting."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(Config.split_seed))
    n_val = round(n * Config.val_fraction)
    return perm[n_val:], perm[:n_val]


def make_optimizer(model, hyper, steps_per_epoch):
    """The setting's optimizer, with its one-kernel update where there is one, and its lr schedule."""
    fused = hyper['optimizer'] != 'Adadelta' and next(model.parameters()).device.type in ('cpu', 'cuda')
    optimizer = OPTIMIZERS[hyper['optimizer']](
        model.parameters(), lr=hyper['lr'], weight_decay=hyper['weight_decay'], **({'fused': True} if fused else {})
    )
    if hyper['schedule'] == 'onecycle':
        return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, hyper['lr'], hyper['epochs'] * steps_per_epoch)
    return optimizer, None


def distort(x, hyper):
    """Randomly warped copies of a batch of images [B, 784]: affine (rotation, scale, shear, shift) and elastic."""
    b, device = len(x), x.device

    def uniform(size):
        return (torch.rand(b, device=device) * 2 - 1) * size * hyper['distort']

    angle, scale, shear = uniform(0.2), 1 + uniform(0.1), uniform(0.1)
    cos, sin = angle.cos() * scale, angle.sin() * scale
    shift = 0 if hyper['deskew'] else 0.15  # deskewing centres every image: shifting would only add noise
    coef = torch.stack([cos, shear - sin, uniform(shift), sin, cos, uniform(shift)], 1).view(b, 2, 3)
    if hyper['elastic']:  # a smooth random displacement field, in pixels (2 / 28 grid units per pixel)
        coef = torch.cat([coef, torch.randn(b, 2, 16, device=device) * (hyper['elastic'] * 2 / 28)], 2)
    return warp(x, coef)


def make_step(model, optimizer, hyper):
    """One optimisation step on a mini-batch (warped first if the setting says so); returns the batch's loss."""

    def step(xb, yb):
        if hyper['distort'] or hyper['elastic']:
            xb = distort(xb, hyper)
        loss = F.cross_entropy(model.classify(xb), yb, label_smoothing=hyper['label_smoothing'])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def train(model, step, x, y, batch_size, scheduler=None):
    """One epoch; returns the training loss averaged over all its batches."""
    model.train()
    losses = []
    for xb, yb in generate_batch(x, y, batch_size):
        losses.append(step(xb, yb))
        if scheduler:
            scheduler.step()
    return torch.stack(losses).mean().item()


def start_run(folder, args):
    """Lock and check a run's folder: one run writes it at a time, and results are only overwritten when asked.
    Returns the lock, which the operating system releases when this process ends, however it ends."""
    try:
        os.makedirs(folder, exist_ok=True)
        lock = open(os.path.join(folder, '.lock'), 'w')
    except OSError as e:
        fail(f'cannot create the output folder {folder}: {e.strerror}')
    if fcntl:  # no lock on Windows
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fail(f'another run is writing {folder}; wait until it ends or stop it')
    for tmp in glob.glob(os.path.join(folder, '*.tmp')):  # left by a run that was killed while writing
        os.remove(tmp)
    old = [p for pattern in RESULTS for p in glob.glob(os.path.join(folder, pattern))]
    if args.force:
        for p in old:
            os.remove(p)
    elif old and not args.resume:
        fail(f'{folder} already holds results; pass --resume to continue them or --force to start over')
    return lock


def run_identity(history):
    """What a resumed run must share with the saved one; epochs only count when the lr schedule spans them."""
    h = history['hyperparameters']
    return {**h, 'epochs': h['epochs'] if h['schedule'] else None}, history['seed']


def resume(folder, model, optimizer, scheduler, history):
    """Load the state after the last finished epoch, if there is one; returns the history so far."""
    path = os.path.join(folder, 'last.pth')
    if not os.path.exists(path):
        return history
    try:
        state = load_checkpoint(path)
        same = run_identity(state['history']) == run_identity(history)
        model.load_state_dict(state['model_state_dict'])
        optimizer.load_state_dict(state['optimizer_state_dict'])
        if scheduler:
            scheduler.load_state_dict(state['scheduler_state_dict'])
        torch.set_rng_state(state['rng_state'])
    except (ValueError, KeyError, RuntimeError) as e:
        fail(f'cannot resume from {path} ({e}); pass --force to start over')
    if not same:
        fail(
            f'{folder} was trained with other hyperparameters or seed than asked now (for a scheduled setting, '
            'other epochs too); pass --force to start over'
        )
    return {**state['history'], 'hyperparameters': history['hyperparameters']}


def save_epoch(folder, model, optimizer, scheduler, history, improved):
    """Best checkpoint (if improved), then the resumable state and the history, each written atomically."""
    epoch = len(history['epochs'])
    if improved:
        best = os.path.join(folder, f'epoch_{epoch}.pth')
        save_atomic(
            best,
            lambda f: torch.save(
                {
                    'epoch': epoch,
                    'model_state_dict': model.state_dict(),
                    'hyperparameters': history['hyperparameters'],
                    'val_accuracy': history['best_val_accuracy'],
                },
                f,
            ),
        )
        for old in glob.glob(os.path.join(folder, 'epoch_*.pth')):
            if old != best:
                os.remove(old)
    state = {
        'epoch': epoch,
        'model_state_dict': model.state_dict(),
        'history': history,
        'optimizer_state_dict': optimizer.state_dict(),
        'rng_state': torch.get_rng_state(),
        'scheduler_state_dict': scheduler.state_dict() if scheduler else None,
    }
    save_atomic(os.path.join(folder, 'last.pth'), lambda f: torch.save(state, f))
    save_atomic(os.path.join(folder, 'history.json'), lambda f: f.write(json.dumps(history, indent=1).encode()))


@functools.cache
def training_data(data_dir, device):
    """The training and validation splits as tensors on the device, read once per process."""
    x, y = data_load(data_dir, train=True)  # the test split is read by evaluation only
    return [(x[i].to(device), y[i].to(device)) for i in split_indices(len(x))]


def train_setting(name, seed, folder, args):
    """Train one setting with one seed; returns False if training diverged."""
    (x_train, y_train), (x_val, y_val) = training_data(args.data_dir, args.device)
    hyper = {**setting(name), **({'epochs': args.epochs} if args.epochs else {})}
    torch.manual_seed(seed)
    model = build_model(hyper).to(args.device)
    x_train, x_val = model.straighten(x_train), model.straighten(x_val)  # deskewed once per run, if at all
    model.fit_input(x_train)
    optimizer, scheduler = make_optimizer(model, hyper, math.ceil(len(x_train) / hyper['batch_size']))
    history = dict(
        setting=str(name),
        hyperparameters=hyper,
        seed=seed,
        device=str(args.device),
        threads=torch.get_num_threads(),
        epochs=[],
        best_epoch=0,
        best_val_accuracy=0.0,
        training_time=0.0,
    )
    if args.resume:
        history = resume(folder, model, optimizer, scheduler, history)
    step = make_step(model, optimizer, hyper)
    label = f'Setting {name}' + (f' seed {seed}' if args.seeds else '')
    for epoch in range(len(history['epochs']) + 1, hyper['epochs'] + 1):
        start = time.perf_counter()
        train_loss = train(model, step, x_train, y_train, hyper['batch_size'], scheduler)
        logits = predict(model, x_val, straightened=True)
        val_loss, val_acc = F.cross_entropy(logits, y_val).item(), (logits.argmax(1) == y_val).float().mean().item()
        seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            print(
                f'{label}: training diverged at epoch {epoch} (loss {train_loss}); stopped, '
                f'keeping the best checkpoint so far (epoch {history["best_epoch"]})',
                file=sys.stderr,
            )
            return False
        history['epochs'].append(
            dict(epoch=epoch, train_loss=train_loss, val_loss=val_loss, val_accuracy=val_acc, seconds=seconds)
        )
        history['training_time'] += seconds
        improved = val_acc > history['best_val_accuracy']
        if improved:
            history['best_epoch'], history['best_val_accuracy'] = epoch, val_acc
        save_epoch(folder, model, optimizer, scheduler, history, improved)
        print(
            f'{label} | epoch {epoch:3d}/{hyper["epochs"]} | train loss {train_loss:.4f} | '
            f'val loss {val_loss:.4f} | val acc {100 * val_acc:.2f}% | {seconds:.2f} s' + (' *' if improved else '')
        )
    if history['best_epoch']:
        fig, ax = plt.subplots(figsize=(6, 4))
        plot_val_accuracy(ax, history, label)
        save_figure(fig, os.path.join(folder, 'val_accuracy.png'))
        print(
            f'{label}: best epoch {history["best_epoch"]} (val acc {100 * history["best_val_accuracy"]:.2f}%), '
            f'{len(history["epochs"])} epochs in {history["training_time"]:.1f} s -> {best_checkpoint(folder)}'
        )
    return True


def train_share(runs, args, threads):
    """A worker process: its share of the runs, one after another, on its share of the cores."""
    start_process()
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops every worker
    sys.stdout.reconfigure(line_buffering=True)  # each line as it comes, also into a pipe
    sys.exit(run_script(lambda: 0 if all([train_setting(*run, args) for run in runs]) else 1))


def train_runs(runs, args):
    """Train the runs one after another, or shared among args.jobs worker processes; True if all went well."""
    jobs = min(args.jobs, len(runs))
    if jobs == 1:
        return all([train_setting(*run, args) for run in runs])
    threads = max(1, torch.get_num_threads() // jobs)  # each worker an equal share of the cores
    torch.set_num_threads(1)  # this process only waits: it starts no torch threads, so forking it is safe
    training_data(args.data_dir, args.device)  # any fault with the data shows here, once; forked workers share it
    method = 'fork' if args.device.type == 'cpu' and sys.platform == 'linux' else 'spawn'  # CUDA survives no fork
    workers = [
        multiprocessing.get_context(method).Process(target=train_share, args=(runs[i::jobs], args, threads))
        for i in range(jobs)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    finally:  # also on Ctrl-C: stop every worker
        for worker in workers:
            worker.terminate()
            worker.join()
    return all(worker.exitcode == 0 for worker in workers)


def main(argv=None):
    start_process()
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    seeds = range(args.seeds) if args.seeds else [args.seed]
    runs = [
        (name, seed, run_dir(args.out_dir, name, seed if args.seeds else None))
        for name in args.setting
        for seed in seeds
    ]
    locks = [start_run(folder, args) for name, seed, folder in runs]
    try:
        return 0 if train_runs(runs, args) else 1
    except KeyboardInterrupt:
        again = ' '.join(a for a in argv if a != '--force') + ('' if args.resume else ' --resume')
        print(
            f'\nInterrupted; finished epochs are saved. Continue with: python MNIST_train.py {again}', file=sys.stderr
        )
        return 130
    finally:
        for lock in locks:
            lock.close()


if __name__ == '__main__':
    sys.exit(run_script(main))
