"""A run on disk: its folder, files written atomically, the folder lock, its checkpoints and the state that
--resume continues from."""

import contextlib
import csv
import glob
import io
import json
import os
import pickle
import re
import sys
import time

import torch

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
    """The folders of a setting's runs, those with a history: one per seed, or else the setting's own folder."""
    folder = run_dir(out_dir, name)
    if not os.path.isdir(folder):
        return []
    seeds = [seed for seed in named(folder, 'seed_N') if os.path.exists(os.path.join(seed, 'history.json'))]
    own = [folder] if os.path.exists(os.path.join(folder, 'history.json')) else []
    return seeds or own


def files(folder, pattern):
    """The files in `folder` that match a glob pattern; the folder's name may hold [ ] * ?."""
    return glob.glob(os.path.join(glob.escape(folder), pattern))


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


def save_atomic(path, write, patience=3.0):
    """Write a file so that it is either complete or as it was: write(buffer) in memory (so that a full disk is an
    OSError naming the file, whatever the writer), then a temp file, fsync, rename. On Windows the rename fails
    while another program has the file open (Excel, a viewer, a virus scanner): it is tried again for `patience`
    seconds."""
    buffer, tmp = io.BytesIO(), f'{path}.{os.getpid()}.tmp'
    write(buffer)
    try:
        with open(tmp, 'wb') as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        deadline = time.monotonic() + patience
        while True:
            try:
                os.replace(tmp, path)
                break
            except PermissionError as e:
                if time.monotonic() > deadline:
                    raise OSError(e.errno, 'another program keeps it open; close that program, then run again') from e
                time.sleep(0.1)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_csv(path, rows):
    """A CSV file in UTF-8 with a byte-order mark, by which Excel knows it is UTF-8 (for ±, λ)."""
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    save_atomic(path, lambda f: f.write(text.getvalue().encode('utf-8-sig')))


def save_torch(path, obj):
    """torch.save, atomically, with every tensor moved to the CPU: the file loads on any machine."""
    save_atomic(path, lambda f: torch.save(on_cpu(obj), f))


def on_cpu(obj):
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    return type(obj)(map(on_cpu, obj)) if isinstance(obj, (list, tuple)) else obj


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
        lock = open(os.path.join(folder, '.lock'), 'wb')
    except OSError as e:
        raise ValueError(f'cannot create the output folder {folder}: {e.strerror}') from None
    try:
        if not take(lock):
            raise ValueError(f'another run is writing {folder}; wait until it ends or stop it')
    except OSError as e:  # a file system without locks (some network folders): EOPNOTSUPP, ENOLCK
        print(f'warning: {folder} cannot be locked ({e.strerror}); start no second run on it', file=sys.stderr)
    return lock


def training(folder):
    """Whether a run is writing `folder` now, holding its lock (False where there is no lock, or no locking)."""
    with contextlib.suppress(OSError), open(os.path.join(folder, '.lock'), 'rb') as f:
        return not take(f)
    return False


def open_run(folder, resume):
    """Lock and check a run's folder: results are only continued when asked, and a setting's own folder is not
    trained beside the runs of several seeds. Returns the lock."""
    held = lock(folder)
    for tmp in files(folder, '*.tmp'):  # left by a run that was killed while writing
        os.remove(tmp)
    if any(results(seed) for seed in named(folder, 'seed_N')):
        raise ValueError(
            f'{folder} holds runs of several seeds (--seeds); continue them with --seeds K, or pass --force'
        )
    if results(folder) and not resume:
        raise ValueError(f'{folder} already holds results; pass --resume to continue them or --force to start over')
    return held


def start_over(folder):
    """--force: delete the results of a setting's every run, in its own folder and its seeds' folders, so that
    only the runs of this command remain. While another process writes one of them, one sentence and nothing else."""
    folders = [folder, *named(folder, 'seed_N')] if os.path.isdir(folder) else []
    locks = [lock(run) for run in folders]  # every one before anything is deleted
    for path in (path for run in folders for path in results(run)):
        os.remove(path)
    for held in locks:
        held.close()


def load_checkpoint(path, model=None):
    """Read a checkpoint safely (tensors and plain values only) onto the CPU and load its weights into `model`, if
    given, wherever the model is; ValueError says what is wrong."""
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise ValueError(f'{path} is missing') from None
    except pickle.UnpicklingError:
        raise ValueError(
            f'{path} is damaged or holds more than tensors and plain values; refused, as it could run code'
        ) from None
    except Exception:
        raise ValueError(f'{path} is empty, truncated or not a PyTorch checkpoint') from None
    if not isinstance(checkpoint, dict) or 'model_state_dict' not in checkpoint or 'epoch' not in checkpoint:
        raise ValueError(f'{path} is not a checkpoint of this project (no epoch or model_state_dict)')
    try:
        if model is not None:
            model.load_state_dict(checkpoint['model_state_dict'])
    except ValueError as e:  # the checkpoint's network differs from the one built for its run
        raise ValueError(f'{path} does not fit its run: {e}') from None
    except (RuntimeError, KeyError, TypeError):
        raise ValueError(f'{path} does not fit the model of its setting (wrong layer names or shapes)') from None
    return checkpoint


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
        state = load_checkpoint(path, model=model)
        same = run_identity(state['history']) == run_identity(history)
        optimizer.load_state_dict(state['optimizer_state_dict'])
        if scheduler:
            scheduler.load_state_dict(state['scheduler_state_dict'])
        torch.set_rng_state(state['rng_state'])
        device, before = next(model.parameters()).device, state['history']['device'].split(':')[0]
        if before != device.type:  # the other device's generator cannot be restored here
            print(
                f'warning: {folder} continues on {device.type} after training on {before}: not bit-exact',
                file=sys.stderr,
            )
        elif state.get('device_rng_state') is not None:
            torch.get_device_module(device).set_rng_state(state['device_rng_state'], device)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f'cannot resume from {path} ({e}); pass --force to start over') from None
    if not same:
        raise ValueError(
            f'{folder} was trained with other hyperparameters or seed than asked now (for a scheduled setting, '
            'other epochs too); pass --force to start over'
        )
    return {**state['history'], 'hyperparameters': history['hyperparameters'], 'device': history['device']}


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
