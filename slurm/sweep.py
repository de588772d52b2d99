"""Train settings on a Slurm cluster: one job array task per run (setting x seed), each requeued and continued when
it is preempted, reaches its time limit or loses its node, then the evaluation once every task has ended, whatever
became of its run: the report names the runs that diverged or did not finish.

python slurm/sweep.py --setting wd --seeds 3 --out-dir /scratch/$USER/mnist --time 1:00:00
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project, from anywhere
import cli
from MNIST_model import Config, data_load

ROOT = os.path.dirname(os.path.abspath(cli.__file__))


def setting(text):
    """argparse type: a setting or group, checked as MNIST_train.py checks it and handed to it as written."""
    cli.setting_names(Config)(text)
    return text


def sbatch(what, *options):
    """Submit a job; returns its id, or stops with one sentence if Slurm refuses it."""
    done = subprocess.run(['sbatch', '--parsable', *options], capture_output=True, encoding='utf-8')
    if done.returncode:
        cli.fail(f'sbatch refused {what}: {(done.stderr.strip().splitlines() or ["no reason given"])[-1]}')
    return done.stdout.strip().split(';')[0]  # the id, without the cluster's name where there are several


def main(argv=None):
    p = argparse.ArgumentParser(
        description='Train settings on a Slurm cluster, one job array task per run, then write the report. '
        'Partition, account and other sbatch options come from SBATCH_PARTITION, SBATCH_ACCOUNT and the like.'
    )
    p.add_argument('--setting', type=setting, required=True, help='as MNIST_train.py takes it: 1-13, all, extra, wd...')
    p.add_argument('--seeds', type=cli.count(1), metavar='K', help='train seeds 0..K-1 of each setting')
    p.add_argument('--epochs', type=cli.count(1), help="epochs to train (default: the setting's)")
    p.add_argument('--data-dir', default=Config.data_dir, help='folder holding MNIST/raw/ (default %(default)s)')
    p.add_argument('--out-dir', default=Config.out_dir, help='shared folder for results (default %(default)s)')
    p.add_argument('--cpus-per-task', type=cli.count(1), default=2, metavar='N', help='cores of each task (default 2)')
    p.add_argument('--time', help="each job's time limit, as sbatch reads it, e.g. 1:00:00 (default: the partition's)")
    args = p.parse_args(argv)
    if not shutil.which('sbatch'):
        cli.fail(
            'sbatch is not on the PATH: slurm/sweep.py submits to a Slurm cluster; on one machine, train the runs '
            'side by side with python MNIST_train.py --jobs N'
        )
    out, data = os.path.abspath(args.out_dir), os.path.abspath(args.data_dir)
    logs = os.path.join(out, 'logs')
    try:
        os.makedirs(logs, exist_ok=True)
        tempfile.TemporaryFile(dir=logs).close()
    except OSError as e:
        cli.fail(f'cannot write the output folder {out}: {e.strerror}')
    try:
        data_load(data)  # downloaded here, once, rather than by every task at the same time
    except ValueError as e:
        cli.fail(e)
    n = len(cli.setting_names(Config)(args.setting)) * (args.seeds or 1)
    folders = ['--data-dir', data, '--out-dir', out]
    train = [sys.executable, os.path.join(ROOT, 'MNIST_train.py'), '--setting', args.setting, *folders]
    train += [f'--seeds={args.seeds}'] if args.seeds else []
    train += [f'--epochs={args.epochs}'] if args.epochs else []
    evaluate = [sys.executable, os.path.join(ROOT, 'MNIST_evaluation.py'), '--setting', args.setting, *folders]
    cores = args.cpus_per_task  # the trainer's threads too
    options = [f'--cpus-per-task={cores}', f'--export=ALL,OMP_NUM_THREADS={cores},PYTHONUNBUFFERED=1']
    options += [f'--time={args.time}'] if args.time else []
    tasks = [f'--array=0-{n - 1}', '--job-name=mnist-train', f'--output={logs}/train_%A_%a.log']
    array = sbatch('the runs', *options, *tasks, os.path.join(ROOT, 'slurm', 'task.sbatch'), *train)
    after = [f'--dependency=afterany:{array}', '--job-name=mnist-evaluate']  # a failed run is a result too
    what = f'the evaluation (the runs were submitted as job array {array})'
    job = sbatch(what, *options, *after, f'--output={logs}/evaluate_%j.log', f'--wrap={shlex.join(evaluate)}')
    print(f'Submitted job array {array}, one task per run ({n} in all, --cpus-per-task {cores} each), and the')
    print(f'evaluation as job {job}, which starts once every task has ended. Logs: {logs}; report: {out}/report.md')
    return 0


if __name__ == '__main__':
    sys.exit(cli.run_script(main))
