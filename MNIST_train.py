"""Train settings of the MNIST 4-layer perceptron and keep each one's best validation epoch.

python MNIST_train.py --setting 2        # one row of Config.settings (MNIST_model.py)
python MNIST_train.py --setting all      # the assignment's four settings
"""

import argparse
import functools
import math
import os
import sys
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from MNIST_model import Config, add_common_args, build_model, data_load, generate_batch, predict, setting
from runs import (
    best_checkpoint,
    count,
    resume,
    run_dir,
    run_script,
    save_epoch,
    save_figure,
    start_process,
    start_run,
    train_runs,
)
from warps import distort

OPTIMIZERS = {'Adadelta': torch.optim.Adadelta, 'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW}


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


def plot_val_accuracy(ax, history, title):
    """Validation accuracy per epoch with the early-stopping epoch marked."""
    acc = [100 * e['val_accuracy'] for e in history['epochs']]
    best = history['best_epoch']
    ax.plot(range(1, len(acc) + 1), acc)
    ax.plot(best, acc[best - 1], 'o', color='tab:red', label=f'best: epoch {best}, {acc[best - 1]:.2f}%')
    ax.set(title=title, xlabel='epoch', ylabel='validation accuracy (%)')
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right')


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
        return 0 if train_runs(runs, args, train_setting, training_data) else 1
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
