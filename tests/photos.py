"""Test digits [784] in [0, 1] turned into the kind of photo a user takes of a digit on paper."""

import torch
import torch.nn.functional as F
from PIL import Image


def photo(x, index, folder):
    """Save digit x as a photo: dark ink on light, unevenly lit paper, 3 to 10 times larger than 28x28, off
    centre; every third a JPEG, every third an RGBA drawing on a transparent background. Returns the path."""
    g = torch.Generator().manual_seed(index)

    def uniform(low, high):
        return low + (high - low) * torch.rand((), generator=g).item()

    side = round(28 * uniform(3, 10))
    digit = round(side * uniform(0.35, 0.6))
    ink = F.interpolate(x.view(1, 1, 28, 28), size=(digit, digit), mode='bilinear', align_corners=False)[0, 0]
    top, left = (round(uniform(0, side - digit)) for _ in range(2))
    coverage = torch.zeros(side, side)
    coverage[top : top + digit, left : left + digit] = ink.clamp(0, 1)
    kind = ('png', 'jpg', 'rgba')[index % 3]
    if kind == 'rgba':  # dark ink, transparent where there is none
        rgba = torch.stack([torch.full_like(coverage, 0.15)] * 3 + [coverage]) * 255
        image = Image.fromarray(rgba.permute(1, 2, 0).round().to(torch.uint8).numpy(), 'RGBA')
    else:  # light paper, lit from one corner, with sensor noise, and blue-black ink on it
        ramp = torch.linspace(0, 1, side)
        light = 0.95 - uniform(0.1, 0.3) * (ramp[:, None] + ramp[None, :]) / 2
        paper = light * torch.tensor([1.0, 0.97, 0.9])[:, None, None] + 0.02 * torch.randn(3, side, side, generator=g)
        rgb = paper * (1 - coverage) + torch.tensor([0.1, 0.1, 0.25])[:, None, None] * coverage
        image = Image.fromarray((rgb.clamp(0, 1) * 255).permute(1, 2, 0).round().to(torch.uint8).numpy(), 'RGB')
    path = folder / f'{index:04d}.{"jpg" if kind == "jpg" else "png"}'
    image.save(path, quality=85) if kind == 'jpg' else image.save(path)
    return path
