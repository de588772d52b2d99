"""Small but valid MNIST IDX files, so that tests run torchvision's real reader without the real data."""

import os
import struct

import torch


def write_idx(path, data):
    """An IDX file: magic 0x803 (images) or 0x801 (labels), big-endian sizes, then uint8 values."""
    magic = 0x800 + data.dim()
    with open(path, 'wb') as f:
        f.write(struct.pack(f'>I{data.dim()}I', magic, *data.shape) + data.to(torch.uint8).numpy().tobytes())


def synthetic_digits(n, seed):
    """Learnable fake digits: a fixed random pattern per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(10, 28, 28, generator=torch.Generator().manual_seed(99)) > 0.7
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    images = patterns[labels] * 200 + torch.rand(n, 28, 28, generator=g) * 55
    return images, labels


def write_mnist(raw_dir, n_train=600, n_test=200, seed=0):
    """The four MNIST raw files with synthetic content in raw_dir."""
    os.makedirs(raw_dir, exist_ok=True)
    for prefix, n, s in (('train', n_train, seed), ('t10k', n_test, seed + 1)):
        images, labels = synthetic_digits(n, s)
        write_idx(os.path.join(raw_dir, f'{prefix}-images-idx3-ubyte'), images)
        write_idx(os.path.join(raw_dir, f'{prefix}-labels-idx1-ubyte'), labels)
