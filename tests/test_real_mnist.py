import os

import pytest

import MNIST_train
from MNIST_model import RAW_FILES, Config

RAW = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), Config.data_dir, 'MNIST', 'raw')
pytestmark = pytest.mark.skipif(
    not all(os.path.isfile(os.path.join(RAW, f)) for f in RAW_FILES), reason=f'real MNIST not found in {RAW}'
)


def test_one_epoch_of_setting_2_reaches_90_percent(tmp_path, capsys):
    assert (
        MNIST_train.main(
            [
                *'--setting 2 --epochs 1 --device cpu --out-dir'.split(),
                str(tmp_path),
                '--data-dir',
                os.path.dirname(os.path.dirname(RAW)),
            ]
        )
        == 0
    )
    line = next(line for line in capsys.readouterr().out.splitlines() if '| epoch   1/1' in line)
    accuracy = float(line.split('val acc ')[1].split('%')[0])
    assert accuracy >= 90, line
