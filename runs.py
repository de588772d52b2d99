"""A run on disk: what a training writes into its folder, each file whole, and reads back to resume."""

import contextlib
import glob
import json
import os
import pickle
import re
import sys
import warnings

import torch

from atomic import save_atomic, save_torch

try:
    import fcntl
except ImportError:  # Windows
    import msvcrt

    fcntl = None

RESULTS = ('last.pth', 'history.json', 'val_accuracy.png')  # and the best checkpoint, epoch_N.pth


def run_dir(out_dir, name, seed=None):
    """Folder of one setting's results; one sub-folder per seed when several seeds are run."""
    path = os.path.join(out_dir, f'setting_{name}')
    return path if seed is None else os.path.join(path, f'seed_{seed}')


def run_folders(out_dir, name):
    """The folders of a setting's runs, those with results: one per seed, or else the setting's own folder."""
    folder = run_dir(out_dir, name)
    if not os.path.isdir(folder):
        return []
    return [seed for seed in named(folder, 'seed_N') if results(seed)] or ([folder] if results(folder) else [])


def named(folder, pattern):
    """The entries of `folder` named exactly as the project names them, `pattern` with a number for N, sorted by
    N; others (a copy, a renamed folder) are not the project's."""
    numbers = re.compile(re.escape(pattern).replace('N', '(0|[1-9][0-9]*)'))
    found = [(int(m[1]), name) for name in os.listdir(folder) if (m := numbers.fullmatch(name))]
    return [os.path.join(folder, name) for _, name in sorted(found)]


def best_checkpoint(folder, history):
    """The checkpoint of the best epoch, which the run's history names."""
    return os.path.join(folder, f'epoch_{history["best_epoch"]}.pth')


def results(folder):
    """The files of a run that the project wrote into `folder`."""
    return [p for p in [os.path.join(folder, f) for f in RESULTS] if os.path.exists(p)] + named(folder, 'epoch_N.pth')


def save_history(folder, history):
    save_atomic(os.path.join(folder, 'history.json'), lambda f: f.write(json.dumps(history, indent=1).encode()))


def take(file):
    """Lock an open file without waiting: False while another process holds it; OSError if locks are unsupported."""
    try:
        if fcntl:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
    except (BlockingIOError, PermissionError):  # held: EWOULDBLOCK from flock, EACCES from msvcrt
        return False
    return True


def lock(folder):
    """Lock a run's folder, making it if need be: one run writes it at a time. Returns the lock, which the operating
    system releases when it is closed or when this process ends, however it ends; ValueError where it cannot."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ValueError(f'cannot create the output folder {folder}: {e.strerror}') from None
    try:
        lock = open(os.path.join(folder, '.lock'), 'wb')
    except OSError as e:
        raise ValueError(f'cannot write in {folder}: {e.strerror}') from None
    try:
        if not take(lock):
            lock.close()
            raise ValueError(f'another run is writing {folder}; wait until it ends or stop it')
    except OSError as e:  # a file system without locks (some network folders): EOPNOTSUPP, ENOLCK
        print(f'warning: {folder} cannot be locked ({e.strerror}); start no second run on it', file=sys.stderr)
    return lock


def training(folder):
    """Whether a run is writing `folder` now, holding its lock (False where there is no lock, or no locking)."""
    with contextlib.suppress(OSError), open(os.path.join(folder, '.lock'), 'rb') as f:
        return not take(f)
    return False


def open_run(setting, folder, resume=False, force=False):
    """Lock and check a run's folder, `setting`'s own or a seed's: results are continued (from their state) or deleted
    only when asked, and a setting's own run and its seeds' runs are not trained side by side. Returns the lock."""
    held = lock(folder)
    for tmp in glob.glob(os.path.join(glob.escape(folder), '*.tmp')):  # left by a run killed while writing
        os.remove(tmp)
    last = os.path.join(folder, 'last.pth')
    if folder == setting and any(results(seed) or training(seed) for seed in named(setting, 'seed_N')):
        problem = f'{setting} holds runs of several seeds; continue them with --seeds K, or pass --force'
    elif folder != setting and (results(setting) or training(setting)):  # each checks after taking its own lock
        problem = f'{setting} holds a run without --seeds; to train seeds, pass --force (without --task)'
    elif finished(folder) and not resume and not force:  # a run stopped in its first epoch has nothing to keep
        problem = f'{folder} already holds results; pass --resume to continue them or --force to start over'
    elif finished(folder) and not os.path.exists(last) and not force:
        problem = f'{last} is missing; train the run again with --force, or evaluate it as it is'
    else:
        for path in results(folder) if force else []:
            os.remove(path)
        return held
    held.close()
    raise ValueError(problem)


def finished(folder):
    """Whether the run in `folder` finished an epoch: its history lists one, or it saved the state after one (which a
    history written as the run starts does not list yet), or it left results without a history."""
    try:
        with open(os.path.join(folder, 'history.json'), encoding='utf-8') as f:
            return bool(json.load(f)['epochs']) or os.path.exists(os.path.join(folder, 'last.pth'))
    except FileNotFoundError:
        return bool(results(folder))
    except (OSError, ValueError, KeyError, TypeError):
        return True


def start_over(*settings):
    """--force for a command that trains settings whole: delete the results of their every run, each one's own and its
    seeds', so that only this command's remain; every folder is locked first, so that while another process writes
    one of them, one sentence says so and nothing is deleted."""
    folders = [run for folder in settings if os.path.isdir(folder) for run in (folder, *named(folder, 'seed_N'))]
    with contextlib.ExitStack() as locks:
        for run in folders:
            locks.enter_context(lock(run))
        for path in (path for run in folders for path in results(run)):
            os.remove(path)


EPOCH = dict(epoch=1, train_loss=0.0, val_loss=0.0, val_accuracy=0.0, seconds=0.0)
HISTORY = dict(seed=0, device='', epochs=[EPOCH], best_epoch=0, best_val_accuracy=0.0, training_time=0.0)


def fits(value, like):
    """Whether a value read from a file has the keys and kinds of `like` (any number for a float, text for None)."""
    if isinstance(like, dict):
        return isinstance(value, dict) and all(key in value and fits(value[key], v) for key, v in like.items())
    if isinstance(like, list):
        return isinstance(value, list) and all(fits(v, like[0]) for v in value)
    return isinstance(value, {float: (int, float), type(None): (str, type(None))}.get(type(like), type(like)))


def load_checkpoint(path, model):
    """Read a checkpoint safely (tensors and plain values only) onto the CPU and load its weights into `model`,
    wherever the model is; ValueError says what is wrong."""
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle, which is refused below anyway
            warnings.filterwarnings('ignore', 'Detected pickle protocol', UserWarning)
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise ValueError(f'{path} is missing') from None
    except pickle.UnpicklingError:
        raise ValueError(
            f'{path} is damaged or holds more than tensors and plain values; refused, as it could run code'
        ) from None
    except Exception:
        raise ValueError(f'{path} is empty, truncated or not a PyTorch checkpoint') from None
    if not fits(checkpoint, {'epoch': 1, 'model_state_dict': {}}):
        raise ValueError(f'{path} is not a checkpoint of this project (no epoch number or model_state_dict)')
    try:
        model.load_state_dict(checkpoint['model_state_dict'])
    except ValueError as e:  # the checkpoint's network differs from the one built for its run
        raise ValueError(f'{path} does not fit its run: {e}') from None
    except (RuntimeError, KeyError, TypeError):
        raise ValueError(f'{path} does not fit the model of its setting (wrong layer names or shapes)') from None
    return checkpoint


def check_history(history, hyperparameters):
    """ValueError unless a history read from a file holds every value that the evaluation and --resume read, of its
    kind (`hyperparameters` shows theirs), and its epochs numbered from 1, the best one among them."""
    n = len(history['epochs']) if fits(history, {**HISTORY, 'hyperparameters': hyperparameters}) else -1
    numbered = n >= 0 and [e['epoch'] for e in history['epochs']] == list(range(1, n + 1))
    if not numbered or history['best_epoch'] > n or not isinstance(history.get('diverged', 0), int):
        raise ValueError('its history lacks a value or holds one of another kind, or its epochs do not add up')


def run_identity(history):
    """What a resumed run must share with the saved one; epochs only count when the lr schedule spans them."""
    h = history['hyperparameters']
    return {**h, 'epochs': h['epochs'] if h['schedule'] else None}, history['seed']


def load_state(folder, model, optimizer, scheduler, history):
    """Load the state after the last finished epoch, if there is one; returns the history so far."""
    path = os.path.join(folder, 'last.pth')
    if not os.path.exists(path):
        return history
    try:
        state = load_checkpoint(path, model)
        check_history(state['history'], history['hyperparameters'])
        same = run_identity(state['history']) == run_identity(history)
        optimizer.load_state_dict(state['optimizer_state_dict'])
        if scheduler:
            scheduler.load_state_dict(state['scheduler_state_dict'])
        torch.set_rng_state(state['rng_state'])
        device, before = next(model.parameters()).device, state['history']['device'].split(':')[0]
        if (before == 'cpu') != (state.get('device_rng_state') is None):
            raise ValueError(f'its random state is not that of a run on {before}')
        threads = state['history'].get('threads', history['threads'])
        if before != device.type:  # the other device's generator cannot be restored here
            print(
                f'warning: {folder} continues on {device.type} after training on {before}: not bit-exact',
                file=sys.stderr,
            )
        elif before != 'cpu':
            torch.get_device_module(device).set_rng_state(state['device_rng_state'], device)
        elif threads != history['threads']:  # on the CPU, whose sums it adds in another order
            print(
                f'warning: {folder} continues with another number of CPU threads ({threads} before, '
                f'{history["threads"]} now): not bit-exact',
                file=sys.stderr,
            )
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ValueError(f'cannot resume from {path} ({e}); pass --force to start over') from None
    if not same:
        raise ValueError(
            f'{folder} was trained with other hyperparameters or seed than asked now (for a scheduled setting, '
            'other epochs too); pass --force to start over'
        )
    return {**state['history'], **{k: history[k] for k in ('hyperparameters', 'device', 'threads')}}


def save_state(folder, model, optimizer, scheduler, history):
    """The state after an epoch, for --resume, and the history, each written atomically. The random state is the
    CPU's and, on an accelerator, the accelerator's, which draws the warps and the dropout there."""
    device = next(model.parameters()).device
    state = {
        'epoch': len(history['epochs']),
        'model_state_dict': model.state_dict(),
        'history': history,
        'optimizer_state_dict': optimizer.state_dict(),
        'rng_state': torch.get_rng_state(),
        'device_rng_state': None if device.type == 'cpu' else torch.get_device_module(device).get_rng_state(device),
        'scheduler_state_dict': scheduler.state_dict() if scheduler else None,
    }
    save_torch(os.path.join(folder, 'last.pth'), state)
    save_history(folder, history)
    for path in named(folder, 'epoch_N.pth'):  # the previous best, once the state that names the new one is saved
        if path != best_checkpoint(folder, history):
            os.remove(path)
