"""A run on disk: its one state, and the files a training writes whole into its folder and reads to resume."""

import contextlib
import dataclasses
import glob
import io
import json
import os
import pickle
import re
import sys
import warnings
import zipfile

import torch

from atomic import save_atomic, save_torch

try:
    import fcntl
except ImportError:  # Windows
    import msvcrt

    fcntl = None

RESULTS = ('last.pth', 'history.json', 'val_accuracy.png')  # and the best checkpoint, epoch_N.pth
CLAIMED, TRAINING = '.lock', '.training'  # locks: a command's on each run it trains, and the one its training holds


@dataclasses.dataclass
class Run:
    """A run as its folder shows it, read by read_run. `state` is one of: absent (nothing trained), waiting (a running
    command trains it later), training, stopped (before its last planned epoch), diverged, finished, damaged or
    unreadable (`problem` says which file and why; `mend` is the trainer's option that mends it, --resume or --force).
    `seed` is the seed of a run of --seeds (its folder is seed_S), else None."""

    folder: str
    seed: int | None = None
    state: str = 'absent'
    history: dict | None = None
    problem: str = ''
    mend: str = ''

    @property
    def trained(self):
        return len(self.history['epochs']) if self.history else 0

    @property
    def planned(self):
        return self.history['hyperparameters']['epochs'] if self.history else None

    @property
    def best(self):
        """The best epoch's checkpoint, which the history names; None before a best epoch."""
        best_epoch = self.history['best_epoch'] if self.history else 0
        return best_checkpoint(self.folder, best_epoch) if best_epoch else None


def best_checkpoint(folder, epoch):
    """The checkpoint of a run's best epoch, `epoch`."""
    return os.path.join(folder, f'epoch_{epoch}.pth')


def run_dir(out_dir, name, seed=None):
    """Folder of one setting's results; one sub-folder per seed when several seeds are run."""
    path = os.path.join(out_dir, f'setting_{name}')
    return path if seed is None else os.path.join(path, f'seed_{seed}')


def runs_of(out_dir, name, base):
    """The runs of a setting: one per seed folder that holds one, or else the setting's own run (maybe absent)."""
    setting = run_dir(out_dir, name)
    try:
        folders = numbered(setting, 'seed_N')
    except OSError as e:
        return [Run(setting, state='unreadable', problem=unreadable(e))]
    seeds = [read_run(folder, base, int(folder.rsplit('_', 1)[1])) for folder in folders]
    return [run for run in seeds if run.state != 'absent'] or [read_run(setting, base)]


def numbered(folder, pattern):
    """The entries of `folder` named exactly `pattern` with a number for N (not a copy), sorted by N."""
    if not os.path.isdir(folder):
        return []
    numbers = re.compile(re.escape(pattern).replace('N', '(0|[1-9][0-9]*)'))
    found = [(int(m[1]), name) for name in os.listdir(folder) if (m := numbers.fullmatch(name))]
    return [os.path.join(folder, name) for _, name in sorted(found)]


def read_run(folder, base, seed=None):
    """The state of the run in `folder`, decided here alone from its files and locks; `base`: the hyperparameters."""
    run = Run(folder, seed)
    last = os.path.join(folder, 'last.pth')
    out = os.path.dirname(folder if seed is None else os.path.dirname(folder))  # the output folder
    try:
        run.history = read_history(folder, base)
    except OSError as e:
        return dataclasses.replace(run, state='unreadable', problem=unreadable(e))
    except ValueError as e:
        run.problem = str(e)
    if is_locked(folder, TRAINING):
        run.state = 'training'
    elif run.problem or (run.history is None and os.path.exists(last)):
        run.state, run.mend = 'damaged', '--force'
        run.problem = run.problem or f'{os.path.join(folder, "history.json")} is missing'
        try:  # its copy in the state after the last epoch, which --resume writes again
            run.history, run.mend = read_state(last, base)['history'], '--resume'
        except (OSError, ValueError) as e:
            run.problem += f', and {unreadable(e)}'
    elif run.history is None and numbered(folder, 'epoch_N.pth'):
        best = os.path.basename(numbered(folder, 'epoch_N.pth')[-1])
        run.state, run.mend = 'damaged', '--force'
        run.problem = f'{folder} holds {best} without the history.json and last.pth of its run'
    elif run.history and run_dir(out, run.history['setting'], None if seed is None else run.history['seed']) != folder:
        whose = f'Setting {run.history["setting"]}' + ('' if seed is None else f' seed {run.history["seed"]}')
        run.state, run.mend = 'damaged', '--force'  # a run copied or moved here from its own folder
        run.problem = f'{folder} holds the run of {whose}, copied or moved here: move it back to keep it'
    elif run.best and not os.path.exists(run.best) and read_history(folder, base) != run.history:
        return read_run(folder, base, seed)  # a training replaced its best checkpoint as it was read
    elif run.best and not os.path.exists(run.best):
        run.state, run.problem, run.mend = 'damaged', f'{run.best}, its best checkpoint, is missing', '--force'
    elif run.history and 'diverged' in run.history:
        run.state = 'diverged'
    elif run.history and run.trained >= run.planned:
        run.state = 'finished'
    elif is_locked(folder, CLAIMED):
        run.state = 'waiting'
    elif run.history:
        run.state = 'stopped'
        try:  # that --resume continues
            if run.trained:
                read_state(last, base)
        except (OSError, ValueError) as e:
            run.state = 'damaged' if isinstance(e, (ValueError, FileNotFoundError)) else 'unreadable'
            run.problem, run.mend = f'{unreadable(e)} (the state that --resume continues)', '--force'
    return run


def unreadable(error):
    """An error in reading a file, in words: the system's reason (and for a permission, what to do), or what's wrong."""
    if not isinstance(error, OSError):
        return str(error)
    access = '; give yourself access to it, then run again' if isinstance(error, PermissionError) else ''
    return f'cannot read {error.filename}: {error.strerror}{access}'


def read_history(folder, base):
    """A run's history.json, checked; None where there is none, OSError where it cannot be read, ValueError where
    what it holds is wrong."""
    path = os.path.join(folder, 'history.json')
    try:
        with open(path, encoding='utf-8') as f:
            history = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:  # JSON's error, or a byte that is not UTF-8
        raise ValueError(f'{path} is damaged ({e})') from None
    check_history(history, base, path)
    return history


def results(folder):
    """The files of a run that the project wrote into `folder`."""
    files = [os.path.join(folder, f) for f in RESULTS]
    return [p for p in files if os.path.exists(p)] + numbered(folder, 'epoch_N.pth')


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
    """Claim a run's folder (made if need be) for this command alone: the lock, which the system releases when it is
    closed or this process ends, however it ends; ValueError where it cannot."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ValueError(f'cannot create the output folder {e.filename or folder}: {e.strerror}') from None
    try:
        lock = open(os.path.join(folder, CLAIMED), 'wb')
    except OSError as e:
        raise ValueError(f'cannot write in {folder}: {e.strerror}') from None
    try:
        if not take(lock):
            lock.close()
            raise ValueError(
                f'another command holds {folder}, training it or waiting to; wait until it ends or stop it'
            )
    except OSError as e:  # a file system without locks (some network folders): EOPNOTSUPP, ENOLCK
        print(f'warning: {folder} cannot be locked ({e.strerror}); start no second run on it', file=sys.stderr)
    return lock


@contextlib.contextmanager
def training(folder):
    """The run in `folder` trains in this block: a lock that tells it from a run that waits its turn."""
    with open(os.path.join(folder, TRAINING), 'wb') as held:
        with contextlib.suppress(OSError):  # a file system without locks, said once by lock()
            take(held)
        yield


def is_locked(folder, name=CLAIMED):
    """Whether a process holds the lock file `name` in `folder` (False where there is none, or it cannot be read)."""
    with contextlib.suppress(OSError), open(os.path.join(folder, name), 'rb') as f:
        return not take(f)
    return False


def open_run(setting, run, resume, force, epochs, again):
    """Check a run that this command has claimed (lock), `setting`'s own or a seed's: results are continued or deleted
    only when asked, and a setting's own run and its seeds' runs are not trained side by side. `epochs`: those
    asked; again(option): this run's own command with that option (whole=True: its setting's). False where the run is
    finished with the epochs asked, and so has nothing to train; ValueError says why it is refused."""
    delete(glob.glob(os.path.join(glob.escape(run.folder), '*.tmp')))  # left by a run killed while writing
    last = os.path.join(run.folder, 'last.pth')
    over = f'start the setting over with: {again("--force", whole=True)}'
    if run.seed is None and any(results(seed) or is_locked(seed) for seed in numbered(setting, 'seed_N')):
        raise ValueError(f'{setting} holds runs of several seeds; continue them with --seeds K --resume, or {over}')
    if run.seed is not None and (results(setting) or is_locked(setting)):  # each checks after taking its own lock
        raise ValueError(f'{setting} holds a run without --seeds; to train seeds instead, {over}')
    if run.state in ('damaged', 'unreadable') and not force and not (resume and run.mend == '--resume'):
        raise ValueError(advice(run, again))
    kept = run.trained or os.path.exists(last)  # a run stopped in its first epoch has nothing to keep
    if kept and not resume and not force:
        further = 'train it further with --resume and a larger --epochs' if run.state == 'finished' else ''
        further = further or f'continue it with: {again("--resume")}'
        raise ValueError(
            f'{run.folder} already holds results ({run.trained} of {run.planned} epochs); {further}, or start it '
            f'over with: {again("--force")}'
        )
    if resume and run.trained and not os.path.exists(last):
        evaluate = ', or evaluate it as it is' if run.state == 'finished' else ''
        raise ValueError(f'{last} is missing; train the run again with: {again("--force")}{evaluate}')
    if resume and run.trained > epochs:
        raise ValueError(
            f'{run.folder} trained {run.trained} epochs, more than the {epochs} asked; it is kept as it is, and '
            f'continues with a larger --epochs'
        )
    delete(results(run.folder) if force else [])
    return force or not (resume and run.state == 'finished' and run.trained == epochs)  # else nothing to train


def advice(run, again):
    """What is wrong with a damaged or unreadable run, and what mends it: again(option) is its own command."""
    if run.state == 'unreadable':
        return run.problem
    return f'{run.problem}; {"continue it" if run.mend == "--resume" else "train it again"} with: {again(run.mend)}'


def start_over(*settings):
    """--force for a command that trains settings whole: delete the results of their every run and seed, once every
    folder is locked (while another process writes one of them, one sentence says so and nothing is deleted)."""
    folders = [run for folder in settings if os.path.isdir(folder) for run in (folder, *numbered(folder, 'seed_N'))]
    with contextlib.ExitStack() as locks:
        for run in folders:
            locks.enter_context(lock(run))
        delete([path for run in folders for path in results(run)])


def delete(paths):
    """Delete these files, or none where a folder of theirs cannot be written; ValueError says which."""
    for folder in dict.fromkeys(map(os.path.dirname, paths)):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f'cannot delete the files in {folder}: no permission to write in it; nothing was deleted')
    try:
        for path in paths:
            os.remove(path)
    except OSError as e:  # a file that another program keeps open, on Windows
        raise ValueError(f'cannot delete {e.filename}: {e.strerror}') from None


EPOCH = dict(epoch=1, train_loss=0.0, val_loss=0.0, val_accuracy=0.0, seconds=0.0)
HISTORY = dict(setting='', seed=0, device='', epochs=[EPOCH], best_epoch=0, best_val_accuracy=0.0, training_time=0.0)


def fits(value, like):
    """Whether a value read from a file has the keys and kinds of `like` (any number for a float, text for None)."""
    if isinstance(like, dict):
        return isinstance(value, dict) and all(key in value and fits(value[key], v) for key, v in like.items())
    if isinstance(like, list):
        return isinstance(value, list) and all(fits(v, like[0]) for v in value)
    return isinstance(value, {float: (int, float), type(None): (str, type(None))}.get(type(like), type(like)))


def read_checkpoint(path):
    """A checkpoint read safely (tensors and plain values only) onto the CPU; ValueError: what is wrong with it,
    OSError: why it cannot be read."""
    with open(path, 'rb') as f:  # read whole first: what torch's reader raises after is about what the file holds
        data = io.BytesIO(f.read())
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle, which is refused below anyway
            warnings.filterwarnings('ignore', 'Detected pickle protocol', UserWarning)
            checkpoint = torch.load(data, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f'{path} is damaged or holds more than tensors and plain values; refused, as it could run code'
        ) from None
    except (EOFError, RuntimeError, ValueError, OSError):  # empty, cut short or no zip archive in it
        raise ValueError(f'{path} is damaged: empty, truncated or not a PyTorch checkpoint') from None
    if zipfile.is_zipfile(data):  # torch's reader skips the checksums of what it reads
        with zipfile.ZipFile(data) as archive:
            damaged = archive.testzip()
        if damaged:
            raise ValueError(f'{path} is damaged: {damaged} in it fails its checksum')
    if not fits(checkpoint, {'epoch': 1, 'model_state_dict': {}}):
        raise ValueError(f'{path} is not a checkpoint of this project (no epoch number or model_state_dict)')
    return checkpoint


def load_checkpoint(path, model, checkpoint=None):
    """The weights of a checkpoint (read from `path`, unless given) in `model`; ValueError says what is wrong."""
    checkpoint = checkpoint or read_checkpoint(path)
    try:
        model.load_state_dict(checkpoint['model_state_dict'])
    except ValueError as e:  # the checkpoint's network differs from the one built for its run
        raise ValueError(f'{path} does not fit its run: {e}') from None
    except (RuntimeError, KeyError, TypeError):
        raise ValueError(f'{path} does not fit the model of its setting (wrong layer names or shapes)') from None
    return checkpoint


def read_state(path, hyperparameters):
    """The state after a run's last finished epoch, with its history checked; ValueError says what is wrong."""
    state = read_checkpoint(path)
    check_history(state.get('history'), hyperparameters, path)
    return state


def check_history(history, hyperparameters, path):
    """ValueError unless a history read from `path` holds every value that the evaluation and --resume read, of its
    kind (`hyperparameters` shows theirs), its epochs numbered from 1, no more than planned, the best among them."""
    n = len(history['epochs']) if fits(history, {**HISTORY, 'hyperparameters': hyperparameters}) else -1
    in_order = n >= 0 and [e['epoch'] for e in history['epochs']] == list(range(1, n + 1))
    in_order = in_order and history['best_epoch'] <= n <= history['hyperparameters']['epochs']
    if not in_order or not isinstance(history.get('diverged', 0), int):
        raise ValueError(
            f'{path} is damaged (its history lacks a value or holds one of another kind, or its epochs do not add up)'
        )


def run_identity(history):
    """What a resumed run must share with the saved one; epochs only count when the lr schedule spans them."""
    h = history['hyperparameters']
    return {**h, 'epochs': h['epochs'] if h['schedule'] else None}, history['seed']


def load_state(folder, model, optimizer, scheduler, history):
    """Load the state after the last finished epoch, if there is one; returns the history so far. ValueError where it
    does not fit the run, OSError where it cannot be read."""
    path = os.path.join(folder, 'last.pth')
    if not os.path.exists(path):
        return history
    try:
        state = load_checkpoint(path, model, read_state(path, history['hyperparameters']))
        same = run_identity(state['history']) == run_identity(history)
        optimizer.load_state_dict(state['optimizer_state_dict'])
        if scheduler:
            scheduler.load_state_dict(state['scheduler_state_dict'])
        torch.set_rng_state(state['rng_state'])
        device, before = next(model.parameters()).device, state['history']['device'].split(':')[0]
        if (before == 'cpu') != (state.get('device_rng_state') is None):
            raise ValueError(f'its random state is not that of a run on {before}')
        threads, change = state['history'].get('threads', history['threads']), None
        if before != device.type:  # the other device's generator cannot be restored here
            change = f'on {device.type} after training on {before}'
        elif before != 'cpu':
            torch.get_device_module(device).set_rng_state(state['device_rng_state'], device)
        elif threads != history['threads']:  # on the CPU, whose sums it adds in another order
            change = f'with another number of CPU threads ({threads} before, {history["threads"]} now)'
        if change:
            print(f'warning: {folder} continues {change}: not bit-exact', file=sys.stderr)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ValueError(f'cannot resume from {path} ({e})') from None
    if not same:
        raise ValueError(
            f'{folder} was trained with other hyperparameters or seed than asked now (for a scheduled setting, '
            'other epochs too)'
        )
    return {**state['history'], **{k: history[k] for k in ('hyperparameters', 'device', 'threads')}}


def save_state(folder, model, optimizer, scheduler, history):
    """The state after an epoch, for --resume, and the history, each written whole; with the accelerator's random
    state where there is one, which draws the warps and the dropout there."""
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
    for path in numbered(folder, 'epoch_N.pth'):  # the previous best, once the state that names the new one is saved
        if path != best_checkpoint(folder, history['best_epoch']):
            os.remove(path)
