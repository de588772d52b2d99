"""MNIST 4-layer perceptron: data, model, settings, and the helpers both scripts share."""
import argparse
import glob
import os
import pickle
from functools import partial

import matplotlib

matplotlib.use('Agg')  # write pictures to files, never open a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torchvision import datasets  # noqa: E402
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor  # noqa: E402

# Weight decay shrinks the weights of always-blank border pixels into denormal floats, which slow CPU arithmetic
# several times over: treat them as zero. Set before torch starts its worker threads, which inherit it.
torch.set_flush_denormal(True)

RAW_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
             't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')


def fail(message):
    """Stop with one plain sentence and exit status 1, no traceback."""
    raise SystemExit(f'error: {message}')


def read_idx(path):
    """One IDX file as a uint8 tensor, read by torchvision; a clear error if it is damaged."""
    try:
        data = read_sn3_pascalvincent_tensor(path)
    except Exception:
        data = None
    if data is None or data.dtype != torch.uint8 or data.numel() == 0:
        fail(f'{path} is not a valid MNIST file (corrupt or truncated); replace it with the original')
    return data


def data_load(data_dir, train=True):
    """One official split: images as floats [N, 784] in [0, 1], labels as int64 [N]."""
    raw = os.path.join(data_dir, 'MNIST', 'raw')
    first = 0 if train else 2
    images, labels = (os.path.join(raw, f) for f in RAW_FILES[first:first + 2])
    if not (os.path.isfile(images) and os.path.isfile(labels)):
        try:
            datasets.MNIST(data_dir, train=train, download=True)
        except Exception:
            fail(f'MNIST is not in {raw} and could not be downloaded; '
                 f'put the four files {", ".join(RAW_FILES)} there')
    x, y = read_idx(images), read_idx(labels)
    if x.shape[1:] != (28, 28) or y.dim() != 1 or len(x) != len(y) or y.max() > 9:
        fail(f'{images} and {labels} do not hold matching 28x28 images and digit labels; '
             f'replace them with the original MNIST files')
    return x.flatten(1).float().div_(255), y.long()


def generate_batch(x, y, batch_size):
    """Shuffled mini-batches of one epoch, gathered from the tensors where they live."""
    perm = torch.randperm(len(x)).to(x.device)
    for i in range(0, len(x), batch_size):
        idx = perm[i:i + batch_size]
        yield x.index_select(0, idx), y.index_select(0, idx)  # 2.5x faster than x[idx] on the CPU


class Maxout(nn.Module):
    """Maximum over groups of `pieces` neighbouring features."""

    def __init__(self, pieces=2):
        super().__init__()
        self.pieces = pieces

    def forward(self, x):
        return x.unflatten(-1, (-1, self.pieces)).amax(-1)


ACTIVATIONS = {'relu': partial(nn.ReLU, inplace=True), 'sigmoid': nn.Sigmoid, 'tanh': nn.Tanh,
               'leaky_relu': partial(nn.LeakyReLU, 0.1), 'elu': nn.ELU, 'maxout': Maxout}
INITS = {'he': partial(nn.init.kaiming_normal_, nonlinearity='relu'), 'xavier': nn.init.xavier_normal_}


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
    theta = torch.stack([one, slant, mean_c / 14, zero, one, mean_r / 14], 1).view(b, 2, 3)  # 14 pixels per unit
    grid = F.affine_grid(theta, (b, 1, 28, 28), align_corners=False)
    return F.grid_sample(image[:, None], grid, align_corners=False).view(b, -1)


class MNIST_model(nn.Module):
    """784 -> width x (layers - 1) -> 10 perceptron. It returns logits: no activation on the output."""

    def __init__(self, layers=4, width=200, activation='relu', init='he', dropout=0.0, deskew=False):
        super().__init__()
        self.deskew = deskew
        pieces = 2 if activation == 'maxout' else 1
        sizes = [28 * 28] + [width] * (layers - 1)
        blocks = []
        for n_in, n_out in zip(sizes, sizes[1:]):
            blocks += [nn.Linear(n_in, n_out * pieces), ACTIVATIONS[activation]()]
            blocks += [nn.Dropout(dropout)] if dropout else []
        self.net = nn.Sequential(*blocks, nn.Linear(sizes[-1], 10))
        # Input standardisation x * scale + shift, set from the training images by fit_input(); identity until then.
        self.register_buffer('input_scale', torch.ones(()))
        self.register_buffer('input_shift', torch.zeros(28 * 28))
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                INITS[init](layer.weight)
                nn.init.zeros_(layer.bias)

    def fit_input(self, x):
        """Centre each pixel on its training mean and divide by the spread of all training pixels."""
        if self.deskew:
            x = torch.cat([deskew(part) for part in x.flatten(1).split(10_000)])
        self.input_scale.copy_(1 / x.std())
        self.input_shift.copy_(-x.mean(0) * self.input_scale)

    def forward(self, x):  # x: [B, 784] or [B, 1, 28, 28] in [0, 1]
        x = deskew(x.flatten(1)) if self.deskew else x.flatten(1)
        return self.net(torch.addcmul(self.input_shift, x, self.input_scale))


class Config:
    batch_size = 200
    lr_adam = 1e-4
    lr_adadelta = 0.1
    epoch = 100
    weight_decay = 0.01  # lambda of the L2 penalty
    seed = 0
    val_fraction = 1 / 6  # 10,000 of the 60,000 training images are held out for validation
    split_seed = 2024  # fixes the validation split, whatever the training seed
    data_dir = 'dataset'
    out_dir = 'saved_model'
    # Every setting is a row of `settings` on top of `base`: add a row to add an experiment.
    # distort: strength of random affine warps of training images (1 = up to 11 degrees, 10% scale, 2 pixels
    # shift); elastic: size in pixels of random smooth displacements; schedule 'onecycle' ramps lr up then down;
    # deskew: the model straightens and centres every image it is given, training and test images alike.
    base = dict(batch_size=batch_size, activation='relu', layers=4, width=200, epochs=epoch, init='he',
                optimizer='Adam', lr=lr_adam, weight_decay=0.0, dropout=0.0, distort=0.0, elastic=0.0,
                label_smoothing=0.0, schedule=None, deskew=False)
    settings = {
        1: dict(optimizer='Adadelta', lr=lr_adadelta),
        2: dict(optimizer='Adam', lr=lr_adam),
        3: dict(optimizer='Adadelta', lr=lr_adadelta, weight_decay=weight_decay),
        4: dict(optimizer='Adam', lr=lr_adam, weight_decay=weight_decay),
        # Additional experiments, each one change to Setting 2
        5: dict(activation='sigmoid', init='xavier'),
        6: dict(activation='tanh', init='xavier'),
        7: dict(activation='leaky_relu'),
        8: dict(activation='elu'),
        9: dict(activation='maxout'),
        10: dict(init='xavier'),
        11: dict(optimizer='AdamW', weight_decay=weight_decay),  # decoupled decay, beside Setting 4's L2
        12: dict(batch_size=50),
        13: dict(batch_size=1000),
        # The assignment's network trained for the best test accuracy it can reach
        'best': dict(optimizer='AdamW', lr=3e-3, weight_decay=0.05, schedule='onecycle', epochs=500,
                     distort=1.0, elastic=1.0, label_smoothing=0.1, deskew=True),
    }
    groups = {'all': [1, 2, 3, 4], 'extra': list(range(5, 14))}  # names for several settings at once


def setting(name):
    """The full hyperparameters of one setting of the table."""
    return {**Config.base, **Config.settings[name]}


def parse_setting(text):
    """argparse type: a setting of Config.settings (number or name) or a group of them."""
    if text in Config.groups:
        return Config.groups[text]
    names = {str(name): name for name in Config.settings}
    if text not in names:
        choices = ', '.join([*names, *Config.groups])
        raise argparse.ArgumentTypeError(f'unknown setting {text!r}; choose from {choices}')
    return [names[text]]


def parse_device(text):
    """argparse type: 'auto' (CUDA when available, else CPU) or a usable torch device."""
    if text == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cpu', 'cuda'):
        raise argparse.ArgumentTypeError(f'unknown device {text!r}; use auto, cpu, cuda or cuda:N')
    if device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f'{text}: no usable CUDA GPU here; use --device cpu')
    return device


def add_common_args(parser, required, setting_help):
    parser.add_argument('--setting', type=parse_setting, required=required, help=setting_help)
    parser.add_argument('--device', type=parse_device, default='auto',
                        help='auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default auto)')
    parser.add_argument('--data-dir', default=Config.data_dir,
                        help=f'folder holding MNIST/raw/ (default {Config.data_dir})')
    parser.add_argument('--out-dir', default=Config.out_dir,
                        help=f'folder of checkpoints, plots and the report (default {Config.out_dir})')


MODEL_KEYS = ('layers', 'width', 'activation', 'init', 'dropout', 'deskew')


def build_model(hyper):
    return MNIST_model(**{k: hyper[k] for k in MODEL_KEYS})


@torch.no_grad()
def predict(model, x, batch_size=10_000):
    """Logits for every image, in eval mode."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate(model, x, y):
    """Mean cross-entropy loss and accuracy (fraction) on a whole split."""
    logits = predict(model, x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def run_dir(out_dir, name, seed=None):
    """Folder of one setting's results; one sub-folder per seed when several seeds are run."""
    path = os.path.join(out_dir, f'setting_{name}')
    return path if seed is None else os.path.join(path, f'seed_{seed}')


def best_checkpoint(folder):
    """The saved best-epoch checkpoint of a run, or None."""
    paths = glob.glob(os.path.join(folder, 'epoch_*.pth'))
    return max(paths, key=lambda p: int(p.rsplit('_', 1)[1][:-4]), default=None)


def save_atomic(path, write):
    """Write a file so that it is either complete or not there: temp file, fsync, rename."""
    tmp = f'{path}.tmp'
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_figure(fig, path):
    save_atomic(path, lambda f: fig.savefig(f, format='png', dpi=100, bbox_inches='tight'))
    plt.close(fig)


def load_checkpoint(path, device='cpu'):
    """Read a checkpoint safely (tensors and plain values only); ValueError says what is wrong."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f'{path} holds more than tensors and plain values; refused, it could run code')
    except Exception:
        raise ValueError(f'{path} is empty, truncated or not a PyTorch checkpoint')
    if not isinstance(checkpoint, dict) or 'model_state_dict' not in checkpoint or 'epoch' not in checkpoint:
        raise ValueError(f'{path} is not a checkpoint of this project (no epoch or model_state_dict)')
    return checkpoint


def load_model(checkpoint, path, device='cpu'):
    """Rebuild the network a checkpoint was trained with and load its weights."""
    model = build_model({**Config.base, **checkpoint.get('hyperparameters', {})}).to(device)
    try:
        model.load_state_dict(checkpoint['model_state_dict'])
    except (RuntimeError, KeyError, TypeError):
        raise ValueError(f'{path} does not fit the model of its setting (wrong layer names or shapes)')
    return model


def plot_val_accuracy(ax, history, title):
    """Validation accuracy per epoch with the early-stopping epoch marked."""
    acc = [100 * e['val_accuracy'] for e in history['epochs']]
    best = history['best_epoch']
    ax.plot(range(1, len(acc) + 1), acc)
    ax.plot(best, acc[best - 1], 'o', color='tab:red', label=f'best: epoch {best}, {acc[best - 1]:.2f}%')
    ax.set(title=title, xlabel='epoch', ylabel='validation accuracy (%)')
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right')
