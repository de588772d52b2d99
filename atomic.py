"""Files written whole: each one, or a set of them, is either as it was or complete, also when the disk is full or
the program is stopped."""

import contextlib
import csv
import io
import os
import signal
import sys
import threading
import time

import torch

HELD_OPEN = 'another program keeps it open; close that program, then run again'


class WriteError(OSError):
    """A file that could not be written: its path, and the system's reason."""


def save_atomic(path, write):
    """Write a file so that it is either complete or as it was: write(buffer) in memory (so that a full disk is an
    OSError naming the file, whatever the writer), then put in place, at once or with the set of together()."""
    buffer = io.BytesIO()
    write(buffer)
    if getattr(pending, 'files', None) is None:
        put_in_place({path: buffer.getvalue()})
    else:
        pending.files[path] = buffer.getvalue()


pending = threading.local()  # .files, while together() runs in a thread: {path: bytes}, to put in place as one set


@contextlib.contextmanager
def together():
    """The files that save_atomic writes in this block as one set, the previous one or the new one whole: rendered in
    memory first (Ctrl-C there leaves every file as it was), then put in place together."""
    pending.files = files = {}
    try:
        yield
    finally:
        pending.files = None
    put_in_place(files)


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM wait until the block has run, then stop the program (in another thread, which they never
    interrupt, the block just runs)."""
    caught, main = [], threading.current_thread() is threading.main_thread()
    held = {sig: signal.signal(sig, lambda s, _: caught.append(s)) for sig in (signal.SIGINT, signal.SIGTERM) if main}
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
    if caught:
        signal.raise_signal(caught[0])


def put_in_place(files, patience=3.0):
    """Write files {path: bytes}, Ctrl-C and SIGTERM waiting: each to a temp file, fsync, then each renamed over its
    path, for `patience` seconds while another program holds it open (on Windows: Excel, a viewer, a virus scanner)."""
    temps = {path: f'{path}.{os.getpid()}.{threading.get_ident()}.tmp' for path in files}  # each writer its own
    try:
        with signals_held():
            for path, data in files.items():
                with open(temps[path], 'wb') as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            for path, temp in temps.items():
                deadline = time.monotonic() + patience
                while True:
                    try:
                        os.replace(temp, path)
                        break
                    except PermissionError as e:  # on Windows, while another program holds path open
                        if sys.platform != 'win32':
                            raise
                        if time.monotonic() > deadline:
                            raise OSError(e.errno, HELD_OPEN) from e
                        time.sleep(0.1)
    except OSError as e:  # naming the file that was being written or renamed
        raise WriteError(e.errno, e.strerror, path) from None
    finally:
        for temp in filter(os.path.exists, temps.values()):
            os.remove(temp)


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
