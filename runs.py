"""Run folders and processes: the command line both scripts share, clean exits, atomic files, the folder lock,
the resume state, the plot of a run's validation accuracy and worker processes."""

import argparse
import csv
import errno
import glob
import io
import json
import multiprocessing
import multiprocessing.connection
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import matplotlib
import matplotlib.pyplot as plt
import torch

try:
    import fcntl
except ImportError:  # Windows
    import msvcrt

    fcntl = None

RESULTS = ('last.pth', 'history.json', 'val_accuracy.png')  # and the best checkpoint, epoch_N.pth


def common_parser(config, description, **setting):
    """A parser with the arguments of both scripts: --setting (a row of config.settings or a group), --device,
    --data-dir and --out-dir. `setting` holds add_argument's keywords for --setting."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--setting', type=setting_names(config), **setting)
    p.add_argument(
        '--device',
        type=parse_device,
        default='auto',
        help='auto (the GPU or other accelerator when there is one, else the CPU), cpu, cuda, cuda:N, mps or xpu',
    )
    p.add_argument('--data-dir', default=config.data_dir, help=f'folder holding MNIST/raw/ (default {config.data_dir})')
    p.add_argument('--out-dir', default=config.out_dir, help=f'folder for results (default {config.out_dir})')
    return p


def setting_names(config):
    """argparse type: a row of config.settings or a group of them, as the list of their names."""

    def parse(text):
        names = {str(name): [name] for name in config.settings} | config.groups
        if text not in names:
            raise argparse.ArgumentTypeError(f'unknown setting {text!r}; choose from {", ".join(names)}')
        return names[text]

    return parse


def parse_device(text):
    """argparse type: 'auto' (the accelerator: CUDA, MPS, XPU..., when there is one, else the CPU) or a device."""
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    try:
        device = accelerator or torch.device('cpu') if text == 'auto' else torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f'unknown device {text!r}; use auto, cpu, cuda, mps, xpu or cuda:N') from None
    if device.type != 'cpu' and (
        device.type != getattr(accelerator, 'type', None) or (device.index or 0) >= torch.accelerator.device_count()
    ):
        raise argparse.ArgumentTypeError(f'{text}: no such device here; use --device cpu')
    return device


def count(minimum):
    """argparse type: a whole number of at least `minimum`."""

    def parse(text):
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f'{text!r} is not a whole number of at least {minimum}')
        return int(text)

    return parse


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a scheduler's time limit): a request to stop, raised where the program is, as
    Ctrl-C raises KeyboardInterrupt."""


def terminated(signum, frame):
    raise Terminated


def start_process(window=False):
    """The scripts' process-wide settings, made before torch starts its threads (which inherit them): pictures go
    to files unless a window is asked for; denormal floats, which weight decay breeds in blank pixels' weights and
    which slow CPUs, are zero; SIGTERM stops the script as Ctrl-C does."""
    if not window:
        matplotlib.use('Agg')
    torch.set_flush_denormal(True)
    signal.signal(signal.SIGTERM, terminated)


def fail(message):
    """Stop with one plain sentence and exit status 1, no traceback."""
    raise SystemExit(f'error: {message}')


def run_script(main, interrupted='Interrupted.'):
    """Run a script's main(): quiet when the reader of its output goes away (| head); on Ctrl-C or SIGTERM the
    sentence `interrupted` and the status 128 + the signal's number; one sentence for a failed write."""
    try:
        code = main()
        sys.stdout.flush()  # here, where a closed pipe is caught, not as Python exits
        return code
    except KeyboardInterrupt as e:
        print(f'\n{interrupted}', file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    except OSError as e:  # a failed write; EFBIG is the file-size limit, a full disk for this process
        if e.filename is None and e.errno in (errno.EPIPE, errno.EINVAL):  # Windows says EINVAL for a closed pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
            return 1
        full = e.errno in (errno.ENOSPC, errno.EFBIG)
        reason = 'the disk is full; free some space, then run again (training with --resume continues)'
        fail(f'cannot write {e.filename}: {reason if full else e.strerror}')


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


def save_figure(fig, path):
    save_atomic(path, lambda f: fig.savefig(f, format='png', dpi=100, bbox_inches='tight'))
    plt.close(fig)


def plot_val_accuracy(histories, path):
    """Validation accuracy per epoch, one panel per run {title: history}, each early-stopping epoch marked."""
    fig, axes = plt.subplots(1, len(histories), figsize=(4.5 * len(histories), 3.6), squeeze=False)
    for ax, (title, history) in zip(axes[0], histories.items()):
        acc = [100 * e['val_accuracy'] for e in history['epochs']]
        best = history['best_epoch']
        ax.plot(range(1, len(acc) + 1), acc)
        ax.plot(best, acc[best - 1], 'o', color='tab:red', label=f'best: epoch {best}, {acc[best - 1]:.2f}%')
        ax.set(title=title, xlabel='epoch', ylabel='validation accuracy (%)')
        ax.grid(alpha=0.3)
        ax.legend(loc='lower right')
    fig.tight_layout()
    save_figure(fig, path)


def run_dir(out_dir, name, seed=None):
    """Folder of one setting's results; one sub-folder per seed when several seeds are run."""
    path = os.path.join(out_dir, f'setting_{name}')
    return path if seed is None else os.path.join(path, f'seed_{seed}')


def files(folder, pattern):
    """The files in `folder` that match a glob pattern; the folder's name may hold [ ] * ?."""
    return glob.glob(os.path.join(glob.escape(folder), pattern))


def command_line(args):
    """A command as this platform's shell reads it, quoted where an argument holds a space or [ ]."""
    return subprocess.list2cmdline(args) if sys.platform == 'win32' else shlex.join(args)


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


def lock(folder):
    """Lock a run's folder, making it if need be: one run writes it at a time. Returns the lock, which the operating
    system releases when it is closed or when this process ends, however it ends."""
    try:
        os.makedirs(folder, exist_ok=True)
        lock = open(os.path.join(folder, '.lock'), 'wb')
    except OSError as e:
        fail(f'cannot create the output folder {folder}: {e.strerror}')
    try:
        if fcntl:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(lock.fileno(), msvcrt.LK_NBLCK, 1)
    except (BlockingIOError, PermissionError):  # held: EWOULDBLOCK from flock, EACCES from msvcrt
        fail(f'another run is writing {folder}; wait until it ends or stop it')
    except OSError as e:  # a file system without locks (some network folders): EOPNOTSUPP, ENOLCK
        print(f'warning: {folder} cannot be locked ({e.strerror}); start no second run on it', file=sys.stderr)
    return lock


def open_run(folder, resume):
    """Lock and check a run's folder: results are only continued when asked, and a setting's own folder is not
    trained beside the runs of several seeds. Returns the lock."""
    held = lock(folder)
    for tmp in files(folder, '*.tmp'):  # left by a run that was killed while writing
        os.remove(tmp)
    if any(results(seed) for seed in named(folder, 'seed_N')):
        fail(f'{folder} holds runs of several seeds (--seeds); continue them with --seeds K, or pass --force')
    if results(folder) and not resume:
        fail(f'{folder} already holds results; pass --resume to continue them or --force to start over')
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
        fail(f'cannot resume from {path} ({e}); pass --force to start over')
    if not same:
        fail(
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


def save_history(folder, history):
    save_atomic(os.path.join(folder, 'history.json'), lambda f: f.write(json.dumps(history, indent=1).encode()))


def start_method(device):
    """How --jobs starts its workers: forked on Linux CPUs (no second import of torch), else spawned as fresh
    processes (Windows and macOS, and CUDA, which survives no fork). MNIST_START_METHOD chooses, for the tests."""
    forks = device.type == 'cpu' and sys.platform == 'linux'
    return os.environ.get('MNIST_START_METHOD', 'fork' if forks else 'spawn')


def run_all(train, runs, jobs, device, load_data, check_data):
    """train(*run) for every run, one after another or shared among `jobs` worker processes; True if all went
    well. Stopping this process (Ctrl-C, SIGTERM) stops every worker. A fault with the data shows here, once:
    load_data() loads it for forked workers to share; spawned workers share nothing, so check_data() reads it
    only to check it."""
    jobs = min(jobs, len(runs))
    if jobs == 1:
        return all([train(*run) for run in runs])
    threads = max(1, torch.get_num_threads() // jobs)  # each worker an equal share of the cores
    torch.set_num_threads(1)  # this process only waits: it starts no torch threads, so forking it is safe
    method = start_method(device)
    if method == 'fork':
        load_data()
    else:
        check_data()
    context = multiprocessing.get_context(method)
    workers = [context.Process(target=work, args=(train, runs[i::jobs], threads)) for i in range(jobs)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:  # unlike join(), a wait that Ctrl-C interrupts on Windows too
            multiprocessing.connection.wait([worker.sentinel])
    finally:
        for worker in workers:
            worker.terminate()
            worker.join()
    return all(worker.exitcode == 0 for worker in workers)


def work(train, runs, threads):
    """A worker process: its share of the runs, one after another, on its share of the cores."""
    start_process()
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's to handle: it stops every worker
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stopped by the command: every finished epoch is saved
    threading.Thread(target=exit_with_command, daemon=True).start()
    sys.stdout.reconfigure(line_buffering=True)  # each line as it comes, also into a pipe
    sys.exit(run_script(lambda: 0 if all([train(*run) for run in runs]) else 1))


def exit_with_command():
    """End this worker as soon as its command has ended without stopping it (SIGKILL, a crash): no worker trains
    on without its command, holding the folder's lock."""
    multiprocessing.parent_process().join()
    os._exit(1)


def run_folders(out_dir, name):
    """The folders of a setting's runs, those with a history: one per seed, or else the setting's own folder."""
    folder = run_dir(out_dir, name)
    if not os.path.isdir(folder):
        return []
    seeds = [seed for seed in named(folder, 'seed_N') if os.path.exists(os.path.join(seed, 'history.json'))]
    own = [folder] if os.path.exists(os.path.join(folder, 'history.json')) else []
    return seeds or own
