"""The command line and the processes of both scripts."""

import argparse
import errno
import multiprocessing.connection
import os
import shlex
import signal
import subprocess
import sys
import threading

import matplotlib
import torch

import atomic


def common_parser(config, description, **setting):
    """A parser with the arguments of both scripts; `setting` holds add_argument's keywords for --setting."""
    p = argparse.ArgumentParser(description=description, allow_abbrev=False)  # commands printed to run again
    p.add_argument('--setting', type=setting_names(config), **setting)
    p.add_argument(
        '--device',
        type=parse_device,
        default='auto',
        help='auto (the GPU or other accelerator when there is one, else the CPU), cpu, cuda, cuda:N, mps or xpu',
    )
    p.add_argument('--data-dir', default=config.data_dir, help='folder holding MNIST/raw/ (default %(default)s)')
    p.add_argument('--out-dir', default=config.out_dir, help='folder for results (default %(default)s)')
    p.set_defaults(config=config)  # for the commands printed: what they need not say
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
        if int(text) >= 2**63:  # torch's seeds are 64-bit
            raise argparse.ArgumentTypeError(f'{text} is too large')
        return int(text)

    return parse


def command_line(args):
    """A command as this platform's shell reads it, quoted where an argument holds a space or [ ]."""
    return subprocess.list2cmdline(args) if sys.platform == 'win32' else shlex.join(args)


def train_command(args, name, *options, epochs=None, seed=None, seeded=False, seeds=None):
    """The trainer's command for setting `name` with these options: its run of `seed` (`seeded`: of --seeds, as the
    last run of seeds 0..seed), or its runs of `seeds` seeds; `args`' folders where they are not the default."""
    words = ['python', 'MNIST_train.py', '--setting', str(name)]
    words += ['--epochs', str(epochs)] if epochs else []
    if seeded:
        words += ['--seeds', str(seed + 1), '--task', str(seed)]
    elif seeds:
        words += ['--seeds', str(seeds)]
    elif seed not in (None, args.config.seed):
        words += ['--seed', str(seed)]
    words += options
    words += ['--data-dir', str(args.data_dir)] if args.data_dir != args.config.data_dir else []
    words += ['--out-dir', str(args.out_dir)] if args.out_dir != args.config.out_dir else []
    return command_line(words)


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a scheduler's time limit), raised where the program is, as Ctrl-C raises its own."""


def terminated(signum, frame):
    raise Terminated


def start_process(window=False):
    """Settings of the process, before torch starts its threads: pictures in files unless a window is asked for;
    denormal floats (weight decay breeds them in blank pixels' weights, and they slow CPUs) zero; SIGTERM stops the
    script as Ctrl-C does, and so does SIGINT where a shell started it in the background with SIGINT ignored."""
    if not window:
        matplotlib.use('Agg')
    torch.set_flush_denormal(True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminated)


def fail(message):
    """Stop with one plain sentence and exit status 1, no traceback."""
    raise SystemExit(f'error: {message}')


def run_script(main, interrupted='Interrupted.', trains=False):
    """Run a script's main(): quiet when the reader of its output goes away (| head); on Ctrl-C or SIGTERM the sentence
    `interrupted` and the status 128 + the signal; one sentence for a file that cannot be written (`trains`: with
    --resume)."""
    try:
        code = main()
        sys.stdout.flush()  # here, where a closed pipe is caught, not as Python exits
        return code
    except KeyboardInterrupt as e:
        print(f'\n{interrupted}', file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    except OSError as e:
        reasons = {
            errno.ENOSPC: 'the disk is full; free some space, then run again',
            errno.EFBIG: 'the file would pass the file-size limit (ulimit -f); raise it, then run again',
        }
        reason = reasons.get(e.errno, e.strerror)
        again = ' (training with --resume continues)' if trains else ''
        if isinstance(e, atomic.WriteError):
            fail(f'cannot write {e.filename}: {reason}{again}')
        if e.filename is not None:  # a file that another call than a write named
            fail(f'{e.filename}: {reason}')
        # no file named: the output, as every file that the program opens is named in its errors
        if e.errno in (errno.EPIPE, errno.EINVAL):  # the reader went away; Windows says EINVAL for a closed pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
            return 1
        fail(f'cannot write the output: {reason}{again}')


def run_all(train, runs, jobs, device):
    """train(*run) for every run, one after another or shared among `jobs` worker processes; True if all went well.
    Stopping this process (Ctrl-C, SIGTERM) stops every worker."""
    jobs = min(jobs, len(runs))
    if jobs <= 1:
        return all([train(*run) for run in runs])
    threads = max(1, torch.get_num_threads() // jobs)  # each worker an equal share of the cores
    torch.set_num_threads(1)  # this process only waits: it starts no torch threads, so forking it is safe
    # forked on Linux CPUs (no second import of torch), else spawned as fresh processes (Windows and macOS, and CUDA,
    # which survives no fork); MNIST_START_METHOD chooses, for the tests
    forks = device.type == 'cpu' and sys.platform == 'linux'
    context = multiprocessing.get_context(os.environ.get('MNIST_START_METHOD', 'fork' if forks else 'spawn'))
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
    killed = [signal.Signals(-worker.exitcode).name for worker in workers if worker.exitcode < 0]
    if killed:  # from outside: by the out-of-memory killer, say
        print(
            f'error: {len(killed)} of {jobs} workers killed ({killed[0]}); run the command again with --resume to '
            'continue their runs',
            file=sys.stderr,
        )
    return all(worker.exitcode == 0 for worker in workers)


def work(train, runs, threads):
    """A worker process: its share of the runs, one after another, on its share of the cores."""
    start_process()
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's to handle: it stops every worker
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stopped by the command: every finished epoch is saved
    threading.Thread(target=exit_with_command, daemon=True).start()
    sys.stdout.reconfigure(line_buffering=True)  # each line as it comes, also into a pipe
    sys.exit(run_script(lambda: 0 if all([train(*run) for run in runs]) else 1, trains=True))


def exit_with_command():
    """End this worker once its command has ended without stopping it (SIGKILL, a crash), not to train on alone."""
    multiprocessing.parent_process().join()
    os._exit(1)
