"""Your own digits: images of digits made to look like MNIST's, and what the network reads in them."""

import mimetypes
import os
import sys
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.widgets import Button
from PIL import Image, ImageDraw, ImageOps
from torchvision.transforms.functional import pil_to_tensor

import atomic
import pictures

IMAGE_TYPES = {ext for ext, kind in Image.registered_extensions().items() if kind in Image.OPEN}  # that Pillow opens
MAX_PIXELS = 50_000_000  # a phone's photo of 48 megapixels; a larger image is refused, to be scaled down first


def image_files(path):
    """The image files in the folder `path` (a line names the entries passed over), or else `path`, for read_image to
    say what is wrong with it; ValueError where the folder cannot be read."""
    if not os.path.isdir(path):
        return [path]
    try:
        names = sorted(f for f in os.listdir(path) if not f.startswith('.'))
    except OSError as e:
        raise ValueError(f'cannot read the folder: {e.strerror}') from None
    files = {f: os.path.join(path, f) for f in names}
    folders = [f for f, p in files.items() if os.path.isdir(p)]  # links to folders too
    images = [p for f, p in files.items() if f not in folders and image_type(f)]
    other = [f for f, p in files.items() if f not in folders and p not in images]
    passed = [f'{", ".join(other)} (not an image file)'] if other else []
    if folders:
        passed.append(f'{", ".join(folders)} (a folder in a folder is not read: give it as a path of its own)')
    if passed:
        print(f'{path}: passed over {"; ".join(passed)}')
    return images or [path]


def image_type(name):
    """Whether a file's name is that of an image: of a type that Pillow opens, or of another (HEIC, SVG)."""
    extension = os.path.splitext(name)[1].lower()
    return extension in IMAGE_TYPES or (mimetypes.guess_type(name)[0] or '').startswith('image/')


def read_image(path):
    """The image in a file, as Pillow reads it, in 8 bits a channel; ValueError says what is wrong with the file."""
    if os.path.isdir(path):
        raise ValueError('the folder holds no images (PNG, JPEG, TIFF or another type that Pillow reads)')
    try:
        with warnings.catch_warnings():  # Pillow's notes on a damaged file: not for the reader of the output
            warnings.simplefilter('ignore')
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise Image.DecompressionBombError
                image.draft(None, (1024, 1024))  # a JPEG is decoded at a half, a quarter or an eighth, if larger
                image = ImageOps.exif_transpose(image)  # a phone's photo, turned as it was taken
                return image.convert('LA') if image.mode == 'La' else eight_bits(image)  # Pillow makes La LA only
    except FileNotFoundError:
        raise ValueError('no such file or folder') from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ValueError(f'the image is larger than {MAX_PIXELS // 10**6} megapixels; scale it down') from None
    except Image.UnidentifiedImageError:
        if not os.path.getsize(path):
            raise ValueError('the file is empty') from None
        extension = os.path.splitext(path)[1].lower()
        if extension not in IMAGE_TYPES and image_type(path):
            raise ValueError(f'Pillow cannot read {extension[1:].upper()} images; convert it to JPEG or PNG') from None
        raise ValueError('not a PNG, JPEG, BMP, GIF or WebP image, nor another type that Pillow reads') from None
    except (OSError, SyntaxError, ValueError, TypeError) as e:  # Pillow's decoders raise each for a damaged file
        if getattr(e, 'errno', None) is not None:  # the system's error: the file could not be read
            raise ValueError(f'cannot read it: {e.strerror}') from None
        raise ValueError('the image is damaged or truncated') from None


def eight_bits(image):
    """An image of 16 or 32 bits a pixel (modes I;16, I, F) in 8 bits by its own range, where Pillow would clip at 255:
    the smallest of 0-1 (floating point below 2 only), 0-255, 0-65535 and 0-2147483647 that holds its values."""
    if image.mode not in ('I', 'F') and not image.mode.startswith('I;16'):
        return image
    floating, image = image.mode == 'F', image.convert('F')
    high = image.getextrema()[1]  # a resampled floating-point image overshoots 1 a little
    top = 1 if floating and high < 2 else next((r for r in (255, 65535) if high <= r), 2**31 - 1)
    return image.point(lambda v: v * 255 / top + 0.5).convert('L')  # rounded: convert() truncates


def normalise(image):
    """A digit image (PIL) as MNIST made its digits: white ink on black, cropped to the ink, the longer side
    fitted to 20 pixels with anti-aliasing, placed in 28x28 with its centre of mass at the centre. Returns
    [784] floats in [0, 1]; ValueError if the image holds no ink."""
    image = image.convert('RGBA')
    image.thumbnail((1024, 1024))
    grey, alpha = pil_to_tensor(image.convert('LA')).float().div(255)
    if alpha.min() < 1:  # transparent pixels are paper: lay the ink on paper of the other brightness
        grey = grey * alpha + (1 - alpha) * float((grey * alpha).sum() < alpha.sum() / 2)
    ink = ink_on_paper(grey)
    ink = ink * the_digit(ink)
    # cropped to the rows and columns of a hundredth of the most ink or more: not to a faint speck beside the digit
    rows, cols = ((ink.sum(axis) >= ink.sum(axis).max() / 100).nonzero()[:, 0] for axis in (1, 0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    size = [max(1, round(20 * n / max(ink.shape))) for n in ink.shape]
    digit = F.interpolate(ink[None, None], size=size, mode='bilinear', antialias=True, align_corners=False)[0, 0]
    digit /= digit.max()
    centre = [(digit.sum(1 - axis) * torch.arange(n)).sum() / digit.sum() for axis, n in enumerate(size)]
    top, left = (min(max(round(14 - c.item()), 0), 28 - n) for c, n in zip(centre, size))  # as in MNIST
    return F.pad(digit, (left, 28 - left - size[1], top, 28 - top - size[0])).flatten()


def ink_on_paper(grey):
    """How far each pixel of a grey image [H, W] stands out from the paper, the paper 0; ValueError if nothing does.
    The paper is what meets the image's edges, whatever its brightness and however much of the image the digit
    covers; the ink is what differs from it, darker or lighter, whichever stands out more."""
    h, w = grey.shape
    edge = torch.ones(h, w, dtype=torch.bool)
    edge[1:-1, 1:-1] = False
    value, edge = grey.flatten(), edge.flatten()
    border = value[edge].sort().values
    half = len(border) // 2
    widths = border[half:] - border[: len(border) - half]
    start = widths.argmin()  # the paper meets more of the edges than a desk or a shadow: the edge's densest half
    level, spread = border[start + half // 2], widths[start]
    paper = edge & ((value - level).abs() <= spread + 0.02)
    # The paper's brightness, which light and shadow vary across a photo: a smooth surface fitted to the paper at
    # the edges, then again to all that the ink does not stand out from
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing='ij')
    surface = torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y]).view(6, -1).T
    for _ in range(3):
        ink = value - surface @ torch.linalg.lstsq(surface[paper], value[paper]).solution
        noise = ink[paper].std(correction=0)  # 0 for a single pixel
        paper = ink.abs() < 3 * noise + 0.02
    if ((ink.abs() - 3 * noise - 0.02).clamp_min(0) * ink.sign()).sum() < 0:  # more stands out darker: dark ink
        ink = -ink
    if ink.max() < 0.15:
        raise ValueError('no ink: the image is blank')
    # What is fainter than the paper's noise, or than a fit's rounding on clean paper, is paper
    ink = (ink.view(h, w) - 6 * noise - 0.001).clamp_min(0)
    if not ink.any():
        raise ValueError('no ink stands out from the noise of the paper')
    return ink


def the_digit(ink):
    """Where the digit is in how far each pixel stands out from the paper [H, W]: without ruled lines (full rows or
    columns thinner than a fortieth of the image, with the blur beside them in a large photo), but for the ink on
    them that stands out more than twice as far as they do and strokes that cross them; and, where regions meet the
    image's edge (a desk, a shadow, a finger) and others of a twentieth of the image or more lie clear of it, those
    others only. In an image cropped to its digit, all that is left is the digit."""
    mask = ink > 0
    for _ in 'rows', 'columns':  # the mask turned after each
        full = mask.float().mean(1) >= 0.8
        ruled = full & ~in_long_runs(full, max(2, len(mask) // 40))
        reach = len(mask) // 300  # the rows beside a line that a large photo's blur reaches
        band = F.max_pool1d(ruled[None].float(), 2 * reach + 1, 1, reach)[0, :, None] > 0
        line = ink[band & mask].median() if ruled.any() else 0  # how far the lines stand out
        kept = (mask & ~(band & (ink <= 2 * line))).float()[None, None]
        k = 2 * reach + 2  # the rows of a line of two and its blur
        above = F.max_pool2d(F.pad(kept, (0, 0, k, 0)), (k, 1), 1)[0, 0, :-1] > 0
        below = F.max_pool2d(F.pad(kept, (0, 0, 0, k)), (k, 1), 1)[0, 0, 1:] > 0
        unruled = (kept[0, 0] > 0) | (mask & band & above & below)  # where a stroke crosses a line, it goes on
        mask, ink = (unruled if unruled.any() else mask).T, ink.T  # where all is lines, they are the digit
    h, w = mask.shape
    if not (mask[[0, -1]].any() or mask[:, [0, -1]].any()):
        return mask
    ys, xs = mask.nonzero().unbind(1)
    step = -(-max(h, w) // 256)  # regions found at most 256 pixels across: ink closer than `step` pixels joins
    label = regions(F.max_pool2d(mask[None].float(), step, ceil_mode=True)[0] > 0)[ys // step, xs // step]
    names, region = label.unique(return_inverse=True)
    top, bottom, left, right = [
        torch.zeros(len(names), dtype=torch.long).scatter_reduce(0, region, v, how, include_self=False)
        for v in (ys, xs)
        for how in ('amin', 'amax')
    ]
    at_edge = (top == 0) | (left == 0) | (bottom == h - 1) | (right == w - 1)
    clear = ~at_edge & ((bottom - top).maximum(right - left) + 1 >= max(h, w) / 20)
    if clear.any() and at_edge.any():
        mask = mask.clone()
        mask[ys, xs] = clear[region]
    return mask


def in_long_runs(mask, length):
    """Which entries of a 1-D mask lie in a run of `length` or more."""
    if len(mask) < length:
        return torch.zeros_like(mask)
    whole = -F.max_pool1d(-mask.float()[None], length, 1)  # 1 where the run of `length` from here is all in mask
    return F.max_pool1d(F.pad(whole, (length - 1, length - 1)), length, 1)[0] > 0


def regions(mask):
    """The 8-connected regions of a mask [H, W]: each pixel's region named by the smallest index (row-major) of
    its pixels, H*W off the mask. Each step takes the smallest name around, then the name that that pixel has."""
    h, w = mask.shape
    off = h * w
    label = torch.where(mask, torch.arange(off).view(h, w), off)
    while True:
        around = -F.max_pool2d(-label[None].float(), 3, 1, 1)[0].long()  # exact below 2**24 pixels
        around = torch.where(mask, around, off).flatten()
        step = torch.cat([around, torch.tensor([off])])[around].view(h, w)
        if torch.equal(step, label):
            return label
        label = step


def show_reading(axes, image, x, probabilities, title):
    """Three panels: an image as given, the 28x28 that the network sees, and the ten probabilities it gives."""
    for ax in axes:
        ax.clear()
    shown = image.convert('RGBA')  # as given, transparency and all
    shown.thumbnail((560, 560))  # as large as a panel shows it: drawing millions of pixels takes seconds and GBs
    axes[0].imshow(shown)
    axes[1].imshow(x.view(28, 28).numpy(), cmap='gray', vmin=0, vmax=1)
    short = title if len(title) <= 22 else f'{title[:10]}…{title[-11:]}'  # a longer name would cover the next title
    axes[0].set(title=short, xticks=[], yticks=[], facecolor='0.75')  # grey where the image is transparent
    axes[1].set(title='what the network sees', xticks=[], yticks=[])
    bars = axes[2].bar(range(10), (100 * probabilities).numpy(), color='tab:gray')
    digit = probabilities.argmax().item()
    bars[digit].set_color('tab:blue')
    read = f'reads {digit} ({probabilities[digit]:.1%})' if probabilities.any() else 'draw a digit'
    axes[2].set(title=read, xticks=range(10), ylim=(0, 100), ylabel='probability (%)')


def read_images(paths, read, out_dir):
    """Print what read(x), the ten probabilities for images [B, 784], gives for each image file (or folder of them),
    write own_digits.png and own_digits.csv; returns how many could not be read."""
    readings, failed = [], 0
    for path in paths:
        try:
            files = image_files(path)
        except ValueError as e:  # a folder that cannot be read: the other paths still are
            print(f'error: {path}: {e}', file=sys.stderr)
            files, failed = [], failed + 1
        for file in files:
            try:
                image = read_image(file)
                with warnings.catch_warnings():  # Pillow's advice on palettes, say: not for the reader of the output
                    warnings.simplefilter('ignore')
                    readings.append((file, image, normalise(image)))
            except ValueError as e:
                print(f'error: {file}: {e}', file=sys.stderr)
                failed += 1
    if not readings:
        return failed
    probabilities = read(torch.stack([x for _, _, x in readings]))
    shown = min(len(readings), 12)  # more would make a picture too long to look at, and slow to draw
    fig, axes = plt.subplots(
        shown, 3, figsize=(9, 2.6 * shown), width_ratios=[1, 1, 1.6], squeeze=False, layout='constrained'
    )
    rows = [['image', 'digit', *range(10)]]
    for k, ((file, image, x), p) in enumerate(zip(readings, probabilities)):
        first, second = p.topk(2).indices.tolist()
        print(f'{file}: {first} ({p[first]:.1%}), then {second} ({p[second]:.1%})')
        if k < shown:
            show_reading(axes[k], image, x, p, os.path.basename(file))
        rows.append([file, first, *(f'{q:.4f}' for q in p.tolist())])
    with atomic.together():  # the picture and the CSV of these images, or of the previous ones
        pictures.save_figure(fig, os.path.join(out_dir, 'own_digits.png'))
        atomic.save_csv(os.path.join(out_dir, 'own_digits.csv'), rows)
    more = f' (the first {shown})' if shown < len(readings) else ''
    print(f'Picture{more}: {os.path.join(out_dir, "own_digits.png")}; every image in own_digits.csv beside it')
    return failed


def draw(read, title):
    """A window to draw a digit in, showing after each stroke what the network sees and reads: the figure and its
    Clear button, which must be kept."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 4), width_ratios=[1, 1, 1.6], layout='constrained')
    fig.suptitle(title)
    paper = Image.new('L', (280, 280), 255)
    pen, last = ImageDraw.Draw(paper), []

    def show():
        try:
            x = normalise(paper)
            p = read(x[None])[0]
        except ValueError:  # blank paper
            x, p = torch.zeros(784), torch.zeros(10)
        show_reading(axes, paper, x, p, 'draw here')
        fig.canvas.draw_idle()

    def stroke(event):  # a line as thick as MNIST's, once the digit is scaled to MNIST's size
        if last and event.inaxes is axes[0]:
            (x0, y0), (x1, y1) = last[0], (event.xdata, event.ydata)
            pen.line([x0, y0, x1, y1], fill=0, width=30)
            pen.ellipse([x1 - 15, y1 - 15, x1 + 15, y1 + 15], fill=0)
            last[:] = [(x1, y1)]
            axes[0].images[0].set_data(paper.convert('RGBA'))  # as show_reading shows it: one channel is colour-mapped
            fig.canvas.draw_idle()

    def press(event):
        if event.inaxes is axes[0]:
            last[:] = [(event.xdata, event.ydata)]
            stroke(event)

    def release(event):
        if last:
            last.clear()
            show()

    def clear(event):
        pen.rectangle([0, 0, 280, 280], fill=255)
        show()

    fig.canvas.mpl_connect('button_press_event', press)
    fig.canvas.mpl_connect('motion_notify_event', stroke)
    fig.canvas.mpl_connect('button_release_event', release)
    button = Button(fig.add_axes([0.01, 0.02, 0.07, 0.08]), 'Clear')
    button.on_clicked(clear)
    show()
    return fig, button


def open_window(read, title):
    """The drawing window, until it is closed; ValueError where no window can open."""
    fig, button = draw(read, title)  # the button answers clicks only while it is kept
    if fig.canvas.required_interactive_framework is None:  # matplotlib found no display or no GUI toolkit
        raise ValueError(
            'no window can open here (no display, or no GUI toolkit for matplotlib); use --image with a photo'
        )
    plt.show()
