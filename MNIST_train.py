"""Train settings of the MNIST 4-layer perceptron and keep each one's best validation epoch.

    python MNIST_train.py --setting 2        # one row of Config.settings (MNIST_model.py)
    python MNIST_train.py --setting all      # the assignment's four settings
"""
import argparse
import functools
import glob
import json
import math
import os
import sys
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from MNIST_model import (Config, add_common_args, best_checkpoint, build_model, data_load, evaluate, fail,
                         generate_batch, load_checkpoint, plot_val_accuracy, run_dir, save_atomic, save_figure,
                         setting)

OPTIMIZERS = {'Adadelta': torch.optim.Adadelta, 'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW}
FUSED = ('Adam', 'AdamW')  # these have one-kernel update steps on CPU and GPU
RESULTS = ('last.pth', 'history.json', 'val_accuracy.png', 'epoch_*.pth')


def count(minimum):
    """argparse type: a whole number of at least `minimum`."""
    def parse(text):
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f'{text!r} is not a whole number of at least {minimum}')
        return int(text)
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(description='Train settings of the MNIST 4-layer perceptron; '
                                'each setting is a row of Config.settings in MNIST_model.py.')
    add_common_args(p, required=True, setting_help="setting to train: a row of Config.settings (1-4 are the "
                    "assignment's, 5-13 and 'best' extra experiments), 'all' for 1-4 or 'extra' for 5-13")
    p.add_argument('--epochs', type=count(1), help="epochs to train (default: the setting's, 100)")
    p.add_argument('--seed', type=count(0), default=Config.seed, help=f'random seed (default {Config.seed})')
    p.add_argument('--seeds', type=count(1), metavar='K',
                   help='train seeds 0..K-1, each into setting_N/seed_S/, for mean and spread in the report')
    again = p.add_mutually_exclusive_group()
    again.add_argument('--resume', action='store_true', help='continue after the last finished epoch')
    again.add_argument('--force', action='store_true', help='delete earlier results of these settings first')
    return p.parse_args(argv)


def split_indices(n):
    """Fixed training and validation indices of the n training images, the same for every seed and setting."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(Config.split_seed))
    n_val = round(n * Config.val_fraction)
    return perm[n_val:], perm[:n_val]


def make_optimizer(model, hyper, steps_per_epoch):
    """The setting's optimizer (fused where it can be, else graph-capturable on a GPU) and lr schedule."""
    device = next(model.parameters()).device
    fast = {'capturable': device.type == 'cuda'}  # a GPU step is recorded as a CUDA graph
    if hyper['optimizer'] in FUSED:
        fast['fused'] = True
    # a tensor learning rate when it is scheduled, so that a CUDA graph sees the changes
    lr = torch.tensor(hyper['lr'], device=device) if hyper['schedule'] else hyper['lr']
    optimizer = OPTIMIZERS[hyper['optimizer']](model.parameters(), lr=lr, weight_decay=hyper['weight_decay'], **fast)
    scheduler = None
    if hyper['schedule'] == 'onecycle':
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, hyper['lr'],
                                                        total_steps=hyper['epochs'] * steps_per_epoch)
    return optimizer, scheduler


@functools.cache
def bicubic_matrix(device):
    """M [28, 4]: bicubic upsampling from 4 to 28 points is linear, so a 4x4 field upsamples as M @ field @ M.T."""
    return F.interpolate(torch.eye(4, device=device)[:, None, :, None], size=(28, 1), mode='bicubic',
                         align_corners=False)[:, 0, :, 0].T


def distort(x, hyper):
    """Randomly warped copies of a batch of images [B, 784]: affine (rotation, scale, shear, shift) and elastic."""
    b, device = len(x), x.device
    def uniform(size):
        return (torch.rand(b, device=device) * 2 - 1) * size * hyper['distort']
    angle, scale, shear = uniform(0.2), 1 + uniform(0.1), uniform(0.1)
    cos, sin = angle.cos() * scale, angle.sin() * scale
    theta = torch.stack([cos, shear - sin, uniform(0.15), sin, cos, uniform(0.15)], 1).view(b, 2, 3)
    grid = F.affine_grid(theta, (b, 1, 28, 28), align_corners=False)
    if hyper['elastic']:  # a smooth random displacement field, in pixels (2 / 28 grid units per pixel)
        field = torch.randn(b, 2, 4, 4, device=device) * (hyper['elastic'] * 2 / 28)
        up = bicubic_matrix(device)
        grid = grid + (up @ field @ up.T).permute(0, 2, 3, 1)
    return F.grid_sample(x.view(b, 1, 28, 28), grid, align_corners=False).view(b, -1)


def make_step(model, optimizer, hyper, warmup=3):
    """One optimisation step on a mini-batch; returns the batch's loss.

    On a GPU, after `warmup` ordinary steps the step is recorded once as a CUDA graph and then replayed:
    one launch per step instead of dozens. A batch of another size runs as an ordinary step.
    """
    def step(xb, yb):
        if hyper['distort'] or hyper['elastic']:
            xb = distort(xb, hyper)
        loss = F.cross_entropy(model(xb), yb, label_smoothing=hyper['label_smoothing'])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    if not next(model.parameters()).is_cuda:
        return step
    graph, static, calls = torch.cuda.CUDAGraph(), [], 0

    def graph_step(xb, yb):
        nonlocal calls
        calls += 1
        if calls <= warmup or (static and len(xb) != len(static[0])):
            side = torch.cuda.Stream()  # warm-up off the default stream, as graph capture requires
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = step(xb, yb)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        if not static:
            static.extend([xb.clone(), yb.clone()])
            with torch.cuda.graph(graph):
                static.append(step(*static[:2]))
        static[0].copy_(xb)
        static[1].copy_(yb)
        graph.replay()
        return static[2].clone()
    return graph_step


def train(model, step, x, y, batch_size, scheduler=None):
    """One epoch; returns the training loss averaged over all its batches."""
    model.train()
    losses = []
    for xb, yb in generate_batch(x, y, batch_size):
        losses.append(step(xb, yb))
        if scheduler:
            scheduler.step()
    return torch.stack(losses).mean().item()


def save_samples(x, y, path):
    """A few training images with their labels, like the skeleton's imshow."""
    fig, axes = plt.subplots(2, 8, figsize=(8, 2.4))
    for ax, image, label in zip(axes.flat, x, y):
        ax.imshow(image.view(28, 28).cpu().numpy(), cmap='gray')
        ax.set_title(int(label))
        ax.axis('off')
    save_figure(fig, path)


def start_run(folder, args):
    """Check and prepare a run's folder: refuse to overwrite results unless told to resume or start over."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        fail(f'cannot create the output folder {folder}: {e.strerror}')
    old = [p for pattern in RESULTS for p in glob.glob(os.path.join(folder, pattern))]
    if args.force:
        for p in old:
            os.remove(p)
    elif old and not args.resume:
        fail(f'{folder} already holds results; pass --resume to continue them or --force to start over')


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
        fail(f'{folder} was trained with other hyperparameters or seed than asked now (for a scheduled setting, '
             'other epochs too); pass --force to start over')
    return {**state['history'], 'hyperparameters': history['hyperparameters']}


def save_epoch(folder, model, optimizer, scheduler, history, improved):
    """Best checkpoint (if improved), then the resumable state and the history, each written atomically."""
    epoch = len(history['epochs'])
    if improved:
        best = os.path.join(folder, f'epoch_{epoch}.pth')
        save_atomic(best, lambda f: torch.save({'epoch': epoch, 'model_state_dict': model.state_dict(),
                                                'hyperparameters': history['hyperparameters'],
                                                'val_accuracy': history['best_val_accuracy']}, f))
        for old in glob.glob(os.path.join(folder, 'epoch_*.pth')):
            if old != best:
                os.remove(old)
    state = {'epoch': epoch, 'model_state_dict': model.state_dict(), 'history': history,
             'optimizer_state_dict': optimizer.state_dict(), 'rng_state': torch.get_rng_state(),
             'scheduler_state_dict': scheduler.state_dict() if scheduler else None}
    save_atomic(os.path.join(folder, 'last.pth'), lambda f: torch.save(state, f))
    save_atomic(os.path.join(folder, 'history.json'), lambda f: f.write(json.dumps(history, indent=1).encode()))


def train_setting(name, seed, folder, data, args):
    """Train one setting with one seed; returns False if training diverged."""
    (x_train, y_train), (x_val, y_val) = data
    hyper = {**setting(name), **({'epochs': args.epochs} if args.epochs else {})}
    torch.manual_seed(seed)
    model = build_model(hyper).to(args.device)
    model.fit_input(x_train)
    optimizer, scheduler = make_optimizer(model, hyper, math.ceil(len(x_train) / hyper['batch_size']))
    history = dict(setting=str(name), hyperparameters=hyper, seed=seed, device=str(args.device), epochs=[],
                   best_epoch=0, best_val_accuracy=0.0, training_time=0.0)
    if args.resume:
        history = resume(folder, model, optimizer, scheduler, history)
    step = make_step(model, optimizer, hyper)
    label = f'Setting {name}' + (f' seed {seed}' if args.seeds else '')
    for epoch in range(len(history['epochs']) + 1, hyper['epochs'] + 1):
        start = time.perf_counter()
        train_loss = train(model, step, x_train, y_train, hyper['batch_size'], scheduler)
        val_loss, val_acc = evaluate(model, x_val, y_val)
        seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            print(f'{label}: training diverged at epoch {epoch} (loss {train_loss}); stopped, '
                  f'keeping the best checkpoint so far (epoch {history["best_epoch"]})', file=sys.stderr)
            return False
        history['epochs'].append(dict(epoch=epoch, train_loss=train_loss, val_loss=val_loss,
                                      val_accuracy=val_acc, seconds=seconds))
        history['training_time'] += seconds
        improved = val_acc > history['best_val_accuracy']
        if improved:
            history['best_epoch'], history['best_val_accuracy'] = epoch, val_acc
        save_epoch(folder, model, optimizer, scheduler, history, improved)
        print(f'{label} | epoch {epoch:3d}/{hyper["epochs"]} | train loss {train_loss:.4f} | '
              f'val loss {val_loss:.4f} | val acc {100 * val_acc:.2f}% | {seconds:.2f} s' + (' *' if improved else ''))
    if history['best_epoch']:
        fig, ax = plt.subplots(figsize=(6, 4))
        plot_val_accuracy(ax, history, label)
        save_figure(fig, os.path.join(folder, 'val_accuracy.png'))
        print(f'{label}: best epoch {history["best_epoch"]} (val acc {100 * history["best_val_accuracy"]:.2f}%), '
              f'{len(history["epochs"])} epochs in {history["training_time"]:.1f} s -> {best_checkpoint(folder)}')
    return True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    seeds = range(args.seeds) if args.seeds else [args.seed]
    runs = [(name, seed, run_dir(args.out_dir, name, seed if args.seeds else None))
            for name in args.setting for seed in seeds]
    for name, seed, folder in runs:
        start_run(folder, args)
    x, y = data_load(args.data_dir, train=True)  # the test split is read by evaluation only
    train_idx, val_idx = split_indices(len(x))
    data = [(x[i].to(args.device), y[i].to(args.device)) for i in (train_idx, val_idx)]
    ok = True
    try:
        save_samples(x, y, os.path.join(args.out_dir, 'samples.png'))
        for name, seed, folder in runs:
            ok &= train_setting(name, seed, folder, data, args)
    except KeyboardInterrupt:
        again = ' '.join(a for a in argv if a != '--force') + ('' if args.resume else ' --resume')
        print(f'\nInterrupted; finished epochs are saved. Continue with: python MNIST_train.py {again}',
              file=sys.stderr)
        return 130
    except OSError as e:
        fail(f'cannot write {e.filename}: {e.strerror}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
