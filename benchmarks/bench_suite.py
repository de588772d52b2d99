"""The test suite's wall time in torch imports: the README's test command, timed once, divided by the median of
--repeats timings of `python -c "import torch, torchvision, matplotlib.pyplot"`, in one run on one machine, so
that the figure holds across CPUs of different speeds.

    python benchmarks/bench_suite.py [--repeats 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

from bench_jobs import cpu_model

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')


def wall_time(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--repeats', type=int, default=3, help='timings of the import; the median is used (default 3)')
    args = p.parse_args()
    importing = [sys.executable, '-c', 'import torch, torchvision, matplotlib.pyplot']
    imports = [wall_time(importing) for _ in range(args.repeats)]
    suite = wall_time([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider'])
    one = statistics.median(imports)
    print(f'{cpu_model()}, {os.cpu_count()} cores')
    print(f'import: {", ".join(f"{t:.2f}" for t in imports)} s (median {one:.2f} s); suite: {suite:.1f} s')
    print(f'suite / import = {suite / one:.1f}')


if __name__ == '__main__':
    main()
