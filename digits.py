"""Your own digits: image files read, and normalised as MNIST's digits were, for the network to read them."""

import os
import warnings

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision.transforms.functional import pil_to_tensor

IMAGE_TYPES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp')  # PNG, JPEG, BMP, GIF and WebP
MAX_PIXELS = 40_000_000  # a larger photo (48 megapixels from a phone) reads as well once scaled down


def image_files(path):
    """The image files in the folder `path`, or else `path` itself, for read_image to say what is wrong with it."""
    found = os.path.isdir(path) and [os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_TYPES)]
    return sorted(found) if found else [path]


def read_image(path):
    """The image in a file, as Pillow reads it; ValueError says what is wrong with the file."""
    if os.path.isdir(path):
        raise ValueError(f'the folder holds no images ({" ".join(IMAGE_TYPES)})')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise Image.DecompressionBombError
                image.load()
                return image
    except FileNotFoundError:
        raise ValueError('no such file or folder') from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ValueError(f'the image is larger than {MAX_PIXELS // 10**6} megapixels; scale it down') from None
    except Image.UnidentifiedImageError:
        raise ValueError('not a PNG, JPEG, BMP, GIF or WebP image') from None
    except (OSError, SyntaxError, ValueError):  # Pillow's decoders raise each of these for a damaged file
        raise ValueError('the image is damaged or truncated') from None


def normalise(image):
    """A digit image (PIL) as MNIST made its digits: white ink on black, cropped to the ink, the longer side
    fitted to 20 pixels with anti-aliasing, placed in 28x28 with its centre of mass at the centre. Returns
    [784] floats in [0, 1]; ValueError if the image holds no ink."""
    image = ImageOps.exif_transpose(image).convert('RGBA')  # a phone's photo, turned as it was taken
    image.thumbnail((1024, 1024))
    grey, alpha = pil_to_tensor(image.convert('LA')).float().div(255)
    if alpha.min() < 1:  # transparent pixels are paper: lay the ink on paper of the other brightness
        grey = grey * alpha + (1 - alpha) * float((grey * alpha).sum() < alpha.sum() / 2)
    if grey.median() > 0.5:  # most of the image is paper: light paper means dark ink
        grey = 1 - grey
    # The paper's brightness, which light and shadow vary across a photo: a smooth surface fitted to the darker
    # half of the pixels, then again to all that the ink does not stand out from
    h, w = grey.shape
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing='ij')
    surface = torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y]).view(6, -1).T
    value = grey.flatten()
    paper = value <= value.median()
    for _ in range(3):
        ink = value - surface @ torch.linalg.lstsq(surface[paper], value[paper]).solution
        noise = ink[paper].std()
        paper = ink < 3 * noise + 0.02
    if ink.max() < 0.15:
        raise ValueError('no ink: the image is blank')
    ink = (ink.view(h, w) - 6 * noise).clamp_min(0)  # what is fainter than the paper's noise is paper
    rows, cols = ink.sum(1).nonzero()[:, 0], ink.sum(0).nonzero()[:, 0]
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    size = [max(1, round(20 * n / max(ink.shape))) for n in ink.shape]
    digit = F.interpolate(ink[None, None], size=size, mode='bilinear', antialias=True, align_corners=False)[0, 0]
    digit /= digit.max()
    centre = [(digit.sum(1 - axis) * torch.arange(n)).sum() / digit.sum() for axis, n in enumerate(size)]
    top, left = (min(max(round(14 - c.item()), 0), 28 - n) for c, n in zip(centre, size))  # as in MNIST
    x = torch.zeros(28, 28)
    x[top : top + size[0], left : left + size[1]] = digit
    return x.flatten()
