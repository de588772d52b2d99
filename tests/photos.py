"""Test digits [784] in [0, 1], and digits drawn in strokes, turned into the kind of photo a user takes of a digit on
paper."""

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


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


SHAPES = {  # a digit's strokes, in fractions of its box's width and height
    1: [[(0.6, 0.05), (0.4, 0.95)]],
    2: [[(0.1, 0.25), (0.5, 0.05), (0.9, 0.25), (0.1, 0.95), (0.9, 0.95)]],
    4: [[(0.7, 0.95), (0.7, 0.05), (0.05, 0.65), (0.95, 0.65)]],
    7: [[(0.1, 0.1), (0.9, 0.1), (0.4, 0.95)]],
}


def page(digit, height, weight, paper, ink, desk=0.0, shadow=0.0, ruled=False, turn=None, jpeg=False):
    """A digit drawn in ink on paper, `height` pixels tall, its strokes `weight` of that wide, with a dark desk
    beside the page (`desk` of its width), a shadow in the far corner (`shadow` of the paper's light taken), ruled
    lines, turned (a Transpose or None) and saved as a JPEG or not; and the same digit, black on white, alone."""
    width, margin = round(0.7 * height), height // 3 + 2
    band = round(desk * (width + 2 * margin))
    size = (band + margin + width + margin, margin + height + margin)
    box = [(band + margin + x * width, margin + y * height) for x, y in ((0, 0), (1, 1))]
    pen = max(1, round(weight * height))

    def draw(image, fill):
        for stroke in SHAPES[digit]:
            points = [(box[0][0] + x * width, box[0][1] + y * height) for x, y in stroke]
            ImageDraw.Draw(image).line(points, fill=fill, width=pen, joint='curve')
        return image if turn is None else image.transpose(turn)

    alone = draw(Image.new('L', size, 255), 0)
    photo = Image.new('L', size, paper)
    if ruled:
        for y in range(margin // 2, size[1], max(4, height // 3)):
            ImageDraw.Draw(photo).line([(0, y), (size[0], y)], fill=(paper + ink) // 2, width=max(1, size[1] // 150))
    draw(photo, ink)
    a = np.asarray(photo, dtype=np.float32)
    y, x = np.mgrid[: size[1], : size[0]]
    beyond = (x - box[1][0]) + (y - box[1][1]) - pen  # past the line through the far corner, clear of the pen's end
    a = a * (1 - shadow * np.clip(beyond / margin, 0, 1))
    a[:, :band] = min(paper, ink) * 0.6  # a desk darker than the ink
    photo = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
    photo = photo if turn is None else photo.transpose(turn)
    if jpeg:
        buffer = io.BytesIO()
        photo.convert('RGB').save(buffer, 'JPEG', quality=85)
        photo = Image.open(buffer)
    return photo, alone
