"""Image warps: resampling, deskewing and random distortions of images [B, 784]."""

import functools

import torch
import torch.nn.functional as F


@functools.cache
def warp_basis(device):
    """[19, 784]: each output pixel's x, y (in [-1, 1]) and 1, then 16 smooth bumps (4x4 control points
    upsampled bicubically) for elastic fields. A warp's sampling positions are coefficients [B, 2, k] @ basis[:k].
    Built on the CPU, as not every accelerator has bicubic interpolation (MPS had none before late 2024)."""
    pos = (torch.arange(28.0) * 2 - 27) / 28  # pixel centres, as grid_sample reads them
    up = F.interpolate(torch.eye(4)[:, None, :, None], size=(28, 1), mode='bicubic', align_corners=False)[:, 0, :, 0].T
    bumps = torch.einsum('ia,jb->abij', up, up).reshape(16, 784)  # bicubic upsampling is linear: [28, 4] per axis
    return torch.cat([pos.repeat(28)[None], pos.repeat_interleave(28)[None], torch.ones(1, 784), bumps]).to(device)


def warp(x, coef):
    """Images [B, 784] resampled bilinearly: output pixel p reads the input at coef[b] @ warp_basis[:, p]."""
    b, k = coef.shape[0], coef.shape[2]
    grid = (coef.reshape(2 * b, k) @ warp_basis(x.device)[:k]).view(b, 2, 784).transpose(1, 2)
    return F.grid_sample(x.view(b, 1, 28, 28), grid.reshape(b, 28, 28, 2), align_corners=False).view(b, 784)


def deskew(x):
    """Images [B, 784] sheared so that their main stroke stands upright and shifted so that their centre of mass
    is the image centre, both read off the intensity moments: a classic normalisation of handwritten digits."""
    b = len(x)
    image = x.view(b, 28, 28)
    pos = torch.arange(28, dtype=x.dtype, device=x.device) - 13.5  # pixel positions from the image centre
    rows, cols = image.sum(2), image.sum(1)
    mass = rows.sum(1).clamp_min(1e-6)
    mean_r, mean_c = rows @ pos / mass, cols @ pos / mass
    dr, dc = pos - mean_r[:, None], pos - mean_c[:, None]
    var_r = (rows * dr.square()).sum(1) / mass
    slant = torch.einsum('bij,bi,bj->b', image, dr, dc) / mass / var_r.clamp_min(1e-6)  # column shift per row
    one, zero = torch.ones_like(slant), torch.zeros_like(slant)
    return warp(x, torch.stack([one, slant, mean_c / 14, zero, one, mean_r / 14], 1).view(b, 2, 3))


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
