"""Seconds per training epoch (50,000 images at batch 200, plus the 10,000-image validation pass), three ways:

  skeleton  the assignment skeleton's pipeline: datasets.MNIST + ToTensor + DataLoader
  project   this project's epoch: MNIST_train.train() and MNIST_model.predict(), the code MNIST_train.py runs
  by hand   the same arithmetic written out: no autograd, no nn.Module, one fused Adam over one flat weight vector
  floor     only the matrix products of that epoch (forward and backward at batch 200, validation forward)

Then where the time of one of the project's training steps goes, part by part.

    python benchmarks/bench_epoch.py [--device cpu|cuda] [--epochs 5]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

try:
    import resource
except ImportError:  # Windows: no peak-memory figure
    resource = None

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from cli import parse_device  # noqa: E402
from MNIST_model import Config, MNIST_model, data_load, generate_batch, predict, setting  # noqa: E402
from MNIST_train import make_optimizer, split_indices, train  # noqa: E402
from tests.idx import write_mnist  # noqa: E402


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timed(epoch, device, repeats):
    """Median seconds of `repeats` epochs after one warm-up epoch."""
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        epoch()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def skeleton_epoch(data_dir, train_idx, val_idx, device):
    """The skeleton's way: a Dataset of PIL images turned into tensors one by one by a DataLoader."""
    mnist = datasets.MNIST(data_dir, train=True, transform=transforms.ToTensor())
    train_loader = DataLoader(Subset(mnist, train_idx.tolist()), batch_size=Config.batch_size, shuffle=True)
    val_loader = DataLoader(Subset(mnist, val_idx.tolist()), batch_size=Config.batch_size)
    model = MNIST_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=Config.lr_adam)

    def epoch():
        model.train()
        for img, label in train_loader:
            img, label = img.to(device), label.to(device)
            loss = F.cross_entropy(model(img.view(-1, 28 * 28)), label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(
                (model(img.to(device).view(-1, 28 * 28)).argmax(1) == label.to(device)).sum().item()
                for img, label in val_loader
            )
        return correct

    return epoch


def project_epoch(x_train, y_train, x_val, y_val):
    model = MNIST_model().to(x_train.device)
    model.fit_input(x_train)
    hyper = setting(2)
    optimizer, _ = make_optimizer(model, hyper, len(x_train) // Config.batch_size)

    def epoch():
        train(model, optimizer, None, x_train, y_train, hyper)
        predict(model, x_val)

    return epoch


def by_hand_epoch(x_train, y_train, x_val):
    """Setting 2's epoch with only its arithmetic: the gradients written out instead of autograd, and all
    weights in one flat vector so that Adam is a single fused update. A lower bound for any eager loop."""
    model = MNIST_model().to(x_train.device)
    model.fit_input(x_train)
    params = list(model.parameters())
    flat = torch.nn.Parameter(torch.cat([p.detach().flatten() for p in params]))
    flat.grad = torch.zeros_like(flat)
    optimizer = torch.optim.Adam([flat], lr=Config.lr_adam, fused=True)

    def views(t):  # weights and biases (or their gradients) as views into one flat vector
        parts = [v.view_as(p) for v, p in zip(t.detach().split([p.numel() for p in params]), params)]
        return parts[0::2], parts[1::2]

    (weights, biases), (grad_w, grad_b) = views(flat), views(flat.grad)
    one_hot = torch.eye(10, device=x_train.device)

    def forward(x):
        acts = [torch.addcmul(model.input_shift, x, model.input_scale)]
        for w, b in zip(weights[:-1], biases[:-1]):
            acts.append(torch.addmm(b, acts[-1], w.T).relu_())
        return torch.addmm(biases[-1], acts[-1], weights[-1].T), acts

    def epoch():
        losses = []
        for xb, yb in generate_batch(x_train, y_train, Config.batch_size):
            logits, acts = forward(xb)
            log_p, target = logits.log_softmax(1), one_hot.index_select(0, yb)
            losses.append(-(log_p * target).sum() / len(yb))
            g = log_p.exp_().sub_(target).div_(len(yb))  # gradient of the mean cross-entropy wrt the logits
            for k in reversed(range(len(weights))):
                torch.mm(g.T, acts[k], out=grad_w[k])
                torch.sum(g, 0, out=grad_b[k])
                if k:
                    g = (g @ weights[k]).mul_(acts[k].sign())  # ReLU's gradient: sign() is 0 or 1 here
            optimizer.step()
        forward(x_val)
        return torch.stack(losses).mean().item()

    return epoch


def floor_epoch(x_train, x_val):
    """Forward (4 products) and backward (4 weight and 3 input gradients) per batch, then the validation forward."""
    weights = [w.detach() for w in MNIST_model().to(x_train.device).parameters() if w.dim() == 2]
    b = Config.batch_size
    grad_out = torch.randn(b, 10, device=x_train.device)

    def forward(a):
        inputs = []
        for w in weights:
            inputs.append(a)
            a = a @ w.T
        return a, inputs

    def epoch():
        for i in range(0, len(x_train), b):
            _, inputs = forward(x_train[i : i + b])
            g = grad_out
            for k in reversed(range(len(weights))):
                g.T @ inputs[k]
                if k:
                    g = g @ weights[k]
        forward(x_val)

    return epoch


def step_parts(x_train, y_train, repeats=250):
    """Median microseconds of each part of an ordinary (eager) training step of Setting 2, timed one by one."""
    device = x_train.device
    model = MNIST_model().to(device)
    model.fit_input(x_train)
    optimizer, _ = make_optimizer(model, setting(2), 1)
    batches = torch.randperm(len(x_train), device=device).view(-1, Config.batch_size)
    done = {}

    def gather(i):
        idx = batches[i % len(batches)]
        done['x'], done['y'] = x_train.index_select(0, idx), y_train.index_select(0, idx)

    def forward(i):
        done['loss'] = F.cross_entropy(model(done['x']), done['y'])

    def backward(i):
        optimizer.zero_grad(set_to_none=True)
        done['loss'].backward()

    def update(i):
        optimizer.step()

    parts = {
        'gather the batch': gather,
        'forward + loss': forward,
        'zero_grad + backward': backward,
        'optimizer step': update,
    }
    times = {name: [] for name in parts}
    for i in range(repeats + 10):  # the first 10 steps warm up
        for name, part in parts.items():
            sync(device)
            start = time.perf_counter()
            part(i)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[10:]) * 1e6 for name, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', type=parse_device, default='auto', help='auto, cpu, cuda (default auto)')
    p.add_argument('--epochs', type=int, default=5, help='timed epochs per path, after one warm-up (default 5)')
    p.add_argument('--data-dir', default=Config.data_dir, help='folder holding MNIST/raw/')
    args = p.parse_args()
    device = args.device
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, source = args.data_dir, 'real MNIST'
        if not os.path.isfile(os.path.join(data_dir, 'MNIST', 'raw', 'train-images-idx3-ubyte')):
            data_dir, source = tmp, 'synthetic data of MNIST shape (real MNIST not found)'
            write_mnist(os.path.join(tmp, 'MNIST', 'raw'), n_train=60_000, n_test=10)
        x, y = data_load(data_dir)
        train_idx, val_idx = split_indices(len(x))
        x_train, y_train, x_val, y_val = (t.to(device) for t in (x[train_idx], y[train_idx], x[val_idx], y[val_idx]))
        print(
            f'{source}; {len(x_train)} training and {len(x_val)} validation images, batch {Config.batch_size}; '
            f'device {device}'
            + (
                f' ({torch.cuda.get_device_name(device)})'
                if device.type == 'cuda'
                else f' ({torch.get_num_threads()} threads)'
            )
            + f'; torch {torch.__version__}'
        )
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        project = timed(project_epoch(x_train, y_train, x_val, y_val), device, args.epochs)
        memory = (
            f'{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB GPU memory'
            if device.type == 'cuda'
            else f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB process peak RSS'
            if resource
            else 'peak memory not measured on this system'
        )
        by_hand = timed(by_hand_epoch(x_train, y_train, x_val), device, args.epochs)
        floor = timed(floor_epoch(x_train, x_val), device, args.epochs)
        skeleton = timed(skeleton_epoch(data_dir, train_idx, val_idx, device), device, max(3, args.epochs // 2))
        parts = step_parts(x_train, y_train)
    print(f'\n| path | s / epoch (median of {args.epochs}) |\n|---|---|')
    for name, seconds in (
        ('skeleton: DataLoader + ToTensor', skeleton),
        ('project: MNIST_train.train', project),
        ('by hand: no autograd, one flat Adam', by_hand),
        ('floor: matrix products only', floor),
    ):
        print(f'| {name} | {seconds:.3f} |')
    print(
        f'\nproject / floor = {project / floor:.2f}   by hand / floor = {by_hand / floor:.2f}   '
        f'skeleton / project = {skeleton / project:.1f}   project peak memory: {memory}'
    )
    steps = len(x_train) // Config.batch_size
    print('\n| one training step, part by part | µs (median) |\n|---|---|')
    for name, us in parts.items():
        print(f'| {name} | {us:.0f} |')
    print(f'| sum of the parts | {sum(parts.values()):.0f} |')
    print(f'| project epoch / {steps} steps (validation included) | {project / steps * 1e6:.0f} |')
    print(f'| floor epoch / {steps} steps (validation included) | {floor / steps * 1e6:.0f} |')


if __name__ == '__main__':
    main()
