"""Files the program cannot read or write, and output it cannot write, made real: each named with its path and the
system's reason, never called damaged."""

import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image, ImageDraw

from tests.conftest import ROOT, script_env
from tests.test_reliability import FILE_SIZE_LIMIT, assert_clean_error

BYPASS = '-dac_override,-dac_read_search'  # the capabilities by which root reads and writes whatever it likes


def as_a_user():
    """The words before a command that run it as a user whom file permissions bind: root without the capabilities
    that bypass them (a user such as nobody could not read this Python, under /root), or any other user as it is."""
    if sys.platform == 'win32':
        pytest.skip('chmod makes no file unreadable on Windows')
    if os.geteuid() != 0:
        return []
    if not shutil.which('setpriv'):
        pytest.skip('running as root without setpriv (util-linux): no way to drop the permission bypass')
    if subprocess.run(['setpriv', f'--bounding-set={BYPASS}', 'true'], capture_output=True).returncode:
        pytest.skip('setpriv cannot drop the permission bypass here (no CAP_SETPCAP)')
    return ['setpriv', f'--bounding-set={BYPASS}']


def start(script, *args, data, out, user=(), **kwargs):
    """A script started as a user would start it, on `data`, writing into `out`."""
    cmd = [*user, sys.executable, os.path.join(ROOT, script), *map(str, args), '--data-dir', str(data)]
    options = {'stdout': subprocess.PIPE, 'stderr': subprocess.PIPE, 'encoding': 'utf-8', 'env': script_env(), **kwargs}
    return subprocess.Popen([*cmd, '--out-dir', str(out), '--device', 'cpu'], **options)


def finish(process):
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def seven(path):
    image = Image.new('L', (100, 120), 235)
    ImageDraw.Draw(image).line([(15, 20), (85, 20), (40, 100)], fill=25, width=12)
    image.save(path)
    return path


def test_an_unreadable_image_or_folder_is_named_and_the_other_images_are_read(trained, data_dir, tmp_path):
    user = as_a_user()
    locked, folder, good = tmp_path / 'my7.png', tmp_path / 'photos', seven(tmp_path / 'good.png')
    seven(locked).chmod(0)
    folder.mkdir()
    seven(folder / 'seven.png')
    folder.chmod(0)
    result = finish(
        start('MNIST_evaluation.py', '--image', locked, folder, good, data=data_dir, out=trained, user=user)
    )
    assert_clean_error(
        result,
        f'error: {locked}: cannot read it: Permission denied\n',
        f'error: {folder}: cannot read the folder: Permission denied\n',
    )
    assert result.stderr.count('\n') == 2 and 'damaged' not in result.stderr
    assert f'{good}: 7 (' in result.stdout and (trained / 'own_digits.csv').exists()


def test_an_unreadable_data_file_is_named_not_called_damaged(trained, data_dir):
    images = data_dir / 'MNIST' / 'raw' / 't10k-images-idx3-ubyte'
    images.chmod(0)
    result = finish(start('MNIST_evaluation.py', data=data_dir, out=trained, user=as_a_user()))
    assert_clean_error(result, f'error: cannot read {images}: Permission denied\n')
    assert result.stderr.count('\n') == 1 and 'replace' not in result.stderr


def test_an_output_folder_that_cannot_be_written_is_named_by_each_command(trained, data_dir, tmp_path):
    user = as_a_user()
    for folder, _, files in os.walk(trained):  # chmod -R a-w
        for path in [folder, *(os.path.join(folder, f) for f in files)]:
            os.chmod(path, os.stat(path).st_mode & 0o555)
    image = seven(tmp_path / 'seven.png')
    commands = {
        'resume': ('MNIST_train.py', '--setting', '2', '--epochs', '2', '--resume'),
        'report': ('MNIST_evaluation.py',),
        'image': ('MNIST_evaluation.py', '--image', image),
    }
    started = {name: start(*args, data=data_dir, out=trained, user=user) for name, args in commands.items()}
    results = {name: finish(process) for name, process in started.items()}  # side by side: seconds, not minutes
    assert_clean_error(results['resume'], f'error: cannot write in {trained / "setting_2"}: Permission denied\n')
    assert_clean_error(results['report'], f'error: cannot write {trained / "report.md"}: Permission denied\n')
    assert_clean_error(results['image'], f'error: cannot write {trained / "own_digits.png"}: Permission denied\n')
    for result in results.values():
        assert (
            result.stderr.count('\n') == 1 and 'cannot create' not in result.stderr and '--resume' not in result.stderr
        )


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='no /dev/full, a device that is always full')
def test_output_that_cannot_be_written_is_named_as_the_output(trained, data_dir, tmp_path):
    with open('/dev/full', 'w', encoding='utf-8') as full:
        evaluation = start('MNIST_evaluation.py', data=data_dir, out=trained, stdout=full)
        training = start('MNIST_train.py', '--setting', '2', '--epochs', '1', data=data_dir, out=tmp_path, stdout=full)
        results = finish(evaluation), finish(training)
    reason = 'the disk is full; free some space, then run again'
    assert_clean_error(results[0], f'error: cannot write the output: {reason}\n')
    assert_clean_error(results[1], f'error: cannot write the output: {reason} (training with --resume continues)\n')
    assert all(result.stderr.count('\n') == 1 for result in results)
    assert '--resume' not in results[0].stderr  # the evaluation is not given the trainer's hint


@pytest.mark.skipif(sys.platform == 'win32', reason='no file-size limit (resource) on Windows')
def test_a_full_disk_while_the_report_or_the_image_readings_are_written_names_the_file(harness, trained, tmp_path):
    image = seven(tmp_path / 'seven.png')
    for args, name in (((), 'report.md'), (('--image', image), 'own_digits.png')):
        result = harness('MNIST_evaluation', FILE_SIZE_LIMIT.format(limit=100), '--device', 'cpu', *args)
        assert_clean_error(
            result, f'error: cannot write {trained / name}: the file would pass the file-size limit (ulimit -f)'
        )
        assert result.stderr.count('\n') == 1 and '--resume' not in result.stderr


def test_a_checkpoint_that_cannot_be_read_is_named_and_never_advised_away_with_force(trained, data_dir, tmp_path):
    """An unreadable last.pth or best checkpoint is named with the system's reason; the advice is to give yourself
    access, never a --force that would delete the run; the unreadable data folder likewise."""
    user = as_a_user()
    last, (best,) = trained / 'setting_2' / 'last.pth', (trained / 'setting_1').glob('epoch_*.pth')
    last.chmod(0)
    best.chmod(0)
    resumed = finish(
        start('MNIST_train.py', '--setting', '2', '--epochs', '2', '--resume', data=data_dir, out=trained, user=user)
    )
    assert_clean_error(resumed, f'error: cannot read {last}: Permission denied; give yourself access to it')
    evaluated = finish(start('MNIST_evaluation.py', data=data_dir, out=trained, user=user))
    assert_clean_error(evaluated, f'Setting 1: skipped: cannot read {best}: Permission denied; give yourself access')
    assert '--force' not in resumed.stderr + evaluated.stderr and 'damaged' not in resumed.stderr + evaluated.stderr
    raw = data_dir / 'MNIST' / 'raw'
    raw.chmod(0)
    try:
        refused = finish(
            start('MNIST_train.py', '--setting', '3', '--epochs', '1', data=data_dir, out=trained, user=user)
        )
    finally:
        raw.chmod(0o755)
    assert_clean_error(refused, f'error: cannot read {raw}: Permission denied')


def test_a_force_that_cannot_delete_one_folder_deletes_nothing_and_says_which(trained, data_dir):
    user = as_a_user()
    kept = {path: path.read_bytes() for path in trained.rglob('*') if path.is_file()}
    (trained / 'setting_2').chmod(0o555)
    result = finish(
        start('MNIST_train.py', '--setting', 'all', '--epochs', '1', '--force', data=data_dir, out=trained, user=user)
    )
    (trained / 'setting_2').chmod(0o755)
    assert_clean_error(
        result, f'error: cannot delete the files in {trained / "setting_2"}: no permission to write in it; nothing'
    )
    assert {path: path.read_bytes() for path in trained.rglob('*') if path.is_file()} == kept
