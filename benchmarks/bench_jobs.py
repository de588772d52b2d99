"""Wall time of `python MNIST_train.py --setting all --epochs 5` with --jobs 1 and with --jobs N, in one run.

The commands run one after the other, alternating, as a user would type them (start-up and data loading
included); the ratio is the speed-up that --jobs gives on this machine.

    python benchmarks/bench_jobs.py [--jobs 2] [--epochs 5] [--repeats 1]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)
from MNIST_model import Config  # noqa: E402
from tests.idx import write_mnist  # noqa: E402


def cpu_model():
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            return next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), 'unknown CPU')
    except OSError:  # not Linux
        return platform.processor() or 'unknown CPU'


def wall_time(jobs, args, data_dir, out):
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'MNIST_train.py'),
        *'--setting all --epochs'.split(),
        str(args.epochs),
        '--jobs',
        str(jobs),
        *'--device cpu --data-dir'.split(),
        data_dir,
        '--out-dir',
        out,
        '--force',
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--jobs', type=int, default=2, help='worker processes to compare with one (default 2)')
    p.add_argument('--epochs', type=int, default=5, help='epochs of each of the four settings (default 5)')
    p.add_argument('--repeats', type=int, default=1, help='timings of each command; the median is shown (default 1)')
    p.add_argument('--data-dir', default=Config.data_dir, help='folder holding MNIST/raw/')
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, source = args.data_dir, 'real MNIST'
        if not os.path.isfile(os.path.join(data_dir, 'MNIST', 'raw', 'train-images-idx3-ubyte')):
            data_dir, source = tmp, 'synthetic data of MNIST shape (real MNIST not found)'
            write_mnist(os.path.join(tmp, 'MNIST', 'raw'), n_train=60_000, n_test=10)
        times = {1: [], args.jobs: []}
        for _ in range(args.repeats):
            for jobs in times:
                times[jobs].append(wall_time(jobs, args, data_dir, os.path.join(tmp, 'out')))
    print(f'{source}; {cpu_model()}, {os.cpu_count()} cores; --setting all --epochs {args.epochs}\n')
    print(f'| command | wall time, s (median of {args.repeats}) |\n|---|---|')
    median = {jobs: statistics.median(t) for jobs, t in times.items()}
    for jobs, seconds in median.items():
        print(f'| --jobs {jobs} | {seconds:.1f} |')
    print(f'\n--jobs 1 / --jobs {args.jobs} = {median[1] / median[args.jobs]:.2f}')


if __name__ == '__main__':
    main()
