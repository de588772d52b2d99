import codecs
import csv
import json

import pytest
import torch
import torch.nn.functional as F

import MNIST_train
from MNIST_model import MNIST_model, data_load, generate_batch, predict, setting
from MNIST_train import make_optimizer, split_indices, train
from tests.idx import synthetic_digits
from warps import distort

COLUMNS = [  # the assignment's report, column by column
    'Batch_size',
    'Activation function',
    '# of layers',
    'Layer size',
    'Epoch',
    'Weight initialization',
    'Optimizer',
    'Learning rate',
    'Weight decay',
    '100 epoch training time',
    'Early stopping epoch',
    'Accuracy',
]


def test_train_then_evaluate_fills_the_report(run_main, tmp_path):
    trained = run_main('MNIST_train.py', '--setting', '2', '--epochs', '4', '--device', 'cpu')
    assert trained.returncode == 0, trained.stderr
    assert sum('| epoch' in line for line in trained.stdout.splitlines()) == 4  # one line per epoch
    folder = tmp_path / 'out' / 'setting_2'
    history = json.loads((folder / 'history.json').read_text(encoding='utf-8'))
    assert [e['epoch'] for e in history['epochs']] == [1, 2, 3, 4]
    assert history['hyperparameters']['optimizer'] == 'Adam' and history['seed'] == 0
    best = max(history['epochs'], key=lambda e: e['val_accuracy'])
    assert history['best_epoch'] == best['epoch'] and history['best_val_accuracy'] == best['val_accuracy']
    assert [p.name for p in folder.glob('epoch_*.pth')] == [f'epoch_{best["epoch"]}.pth']  # only the best is kept
    assert (folder / 'val_accuracy.png').stat().st_size > 0

    evaluated = run_main('MNIST_evaluation.py')
    assert evaluated.returncode == 0, evaluated.stderr
    assert f'Setting 2: accuracy of the {best["epoch"]} epoch trained model:' in evaluated.stdout
    for missing in (1, 3, 4):
        assert f'python MNIST_train.py --setting {missing}' in evaluated.stdout
    report = (tmp_path / 'out' / 'report.md').read_text(encoding='utf-8')
    header = next(line for line in report.splitlines() if 'Batch_size' in line)
    assert [c.strip() for c in header.strip('|').split('|')][1:] == list(COLUMNS)
    row = next(line for line in report.splitlines() if line.startswith('| Setting #2'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert len(cells) == 13 and all(cells)
    assert cells[1:10] == ['200', 'ReLU', '4', '200', '4', 'He', 'Adam', '0.0001', '0']
    assert cells[11] == str(best['epoch']) and cells[12].endswith('%')
    assert cells[10] == f'{100 * history["training_time"] / 4:.1f} s (from 4 epochs)'  # the time of 100 epochs
    assert (tmp_path / 'out' / 'report.csv').read_bytes().startswith(codecs.BOM_UTF8)  # how Excel knows UTF-8
    with open(tmp_path / 'out' / 'report.csv', encoding='utf-8-sig', newline='') as f:
        table = list(csv.reader(f))
    assert table[0] == ['Setting', *COLUMNS] and table[1][1:] == cells[1:]
    assert (tmp_path / 'out' / 'val_accuracy.png').stat().st_size > 0
    for picture in ('confusion_matrix.png', 'mistakes.png'):  # where the best setting goes wrong
        assert (tmp_path / 'out' / picture).stat().st_size > 0 and f']({picture})' in report
    with open(tmp_path / 'out' / 'confusion_matrix.csv', encoding='utf-8-sig', newline='') as f:
        counts = [[int(n) for n in row[1:]] for row in list(csv.reader(f))[1:]]
    assert len(counts) == 10 and sum(map(sum, counts)) == 200  # every test image, once
    assert sum(counts[i][i] for i in range(10)) == round(float(cells[12][:-1]) * 2)  # the diagonal: the accuracy


def test_checkpoint_loads_the_skeleton_way(run_main, tmp_path, data_dir):
    assert run_main('MNIST_train.py', '--setting', '1', '--epochs', '2').returncode == 0
    (path,) = (tmp_path / 'out' / 'setting_1').glob('epoch_*.pth')
    checkpoint = torch.load(path, weights_only=True)
    model = MNIST_model()
    model.load_state_dict(checkpoint['model_state_dict'])
    x, y = data_load(data_dir, train=False)
    img = x.view(-1, 1, 28, 28)
    assert model(img).argmax(1).eq(y).float().mean() > 0.5


def test_validation_split_is_held_out_and_fixed():
    torch.manual_seed(1)
    train_a, val_a = split_indices(60_000)
    torch.manual_seed(2)
    train_b, val_b = split_indices(60_000)
    assert len(val_a) == 10_000 and len(train_a) == 50_000
    assert torch.equal(val_a, val_b) and torch.equal(train_a, train_b)
    assert torch.equal(torch.cat([train_a, val_a]).sort().values, torch.arange(60_000))  # disjoint, complete


def test_training_loss_is_the_mean_over_all_batches():
    """At learning rate 0 the weights stay, so the mean of the three batches' losses is the loss of all 600 images;
    the last batch's loss alone differs from it."""
    x, y = synthetic_digits(600, seed=0)
    x = x.flatten(1) / 255
    hyper = {**setting(2), 'lr': 0.0}
    torch.manual_seed(0)
    model = MNIST_model()
    optimizer, _ = make_optimizer(model, hyper, 3)
    torch.manual_seed(1)
    loss = train(model, optimizer, None, x, y, hyper)
    torch.manual_seed(1)
    last = torch.randperm(600)[400:]
    assert loss == pytest.approx(F.cross_entropy(predict(model, x), y).item(), rel=1e-6)
    assert abs(loss - F.cross_entropy(predict(model, x[last]), y[last]).item()) > 1e-3


def test_prediction_is_in_eval_mode_without_gradients():
    model = MNIST_model(dropout=0.5).train()
    x = torch.rand(32, 784)
    first, second = predict(model, x), predict(model, x)
    assert torch.equal(first, second) and not first.requires_grad and not model.training


def run_history(data_dir, out, seed):
    assert (
        MNIST_train.main(
            [
                *'--setting 4 --epochs 3 --seed'.split(),
                str(seed),
                *'--device cpu --data-dir'.split(),
                str(data_dir),
                '--out-dir',
                str(out),
            ]
        )
        == 0
    )
    epochs = json.loads((out / 'setting_4' / 'history.json').read_text(encoding='utf-8'))['epochs']
    return [{k: v for k, v in e.items() if k != 'seconds'} for e in epochs]


def test_same_seed_same_history(data_dir, tmp_path):
    first = run_history(data_dir, tmp_path / 'a', 0)
    assert first == run_history(data_dir, tmp_path / 'b', 0)
    assert first != run_history(data_dir, tmp_path / 'c', 1)


def test_seeds_and_additional_experiments_in_the_report(run_main, tmp_path):
    assert run_main('MNIST_train.py', '--setting', '2', '--epochs', '2', '--seeds', '3').returncode == 0
    assert run_main('MNIST_train.py', '--setting', '5', '--epochs', '1').returncode == 0
    folder = tmp_path / 'out' / 'setting_2'
    assert sorted(p.name for p in folder.iterdir()) == ['seed_0', 'seed_1', 'seed_2']
    seeds = [json.loads((folder / f'seed_{s}' / 'history.json').read_text(encoding='utf-8'))['seed'] for s in range(3)]
    assert seeds == [0, 1, 2]
    evaluated = run_main('MNIST_evaluation.py')
    assert evaluated.returncode == 0, evaluated.stderr
    for s in range(3):
        assert f'Setting 2 seed {s}: accuracy of the' in evaluated.stdout
    report = (tmp_path / 'out' / 'report.md').read_text(encoding='utf-8')
    row = next(line for line in report.splitlines() if line.startswith('| Setting #2'))
    accuracy, epoch = row.strip('|').split('|')[-1], row.strip('|').split('|')[-2]
    assert '±' in accuracy and '±' in epoch
    with open(tmp_path / 'out' / 'report.csv', encoding='utf-8-sig', newline='') as f:
        rows = {row['Setting']: row for row in csv.DictReader(f)}
    assert rows['2']['Accuracy'] == accuracy.strip() and rows['2']['Early stopping epoch'] == epoch.strip()
    extra = report.split('## Additional experiments')[1]
    assert '| Setting #5 | activation=sigmoid, init=xavier |' in extra


def test_task_trains_one_run_of_the_settings_and_seeds(run_main, tmp_path):
    """--task I: run I of settings x seeds, in its own folder, as one task of a job array trains it."""
    result = run_main('MNIST_train.py', '--setting', 'all', '--seeds', '2', '--epochs', '1', '--task', '5')
    assert result.returncode == 0, result.stderr
    assert [p.relative_to(tmp_path / 'out').as_posix() for p in (tmp_path / 'out').glob('*/*')] == ['setting_3/seed_1']
    history = json.loads((tmp_path / 'out' / 'setting_3' / 'seed_1' / 'history.json').read_text(encoding='utf-8'))
    assert history['setting'] == '3' and history['seed'] == 1


def textbook_epoch(model, optimizer, batches):
    """A plain training loop over (images, labels) batches; returns the mean of the batch losses."""
    losses = []
    for xb, yb in batches:
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


def test_fast_path_matches_a_plain_loop():
    """Fused optimizer, in-place ReLU and tensor batching give the losses of a textbook loop, seed for seed."""
    x, y = synthetic_digits(1000, seed=0)
    x = x.flatten(1) / 255
    hyper = setting(2)
    torch.manual_seed(0)
    fast = MNIST_model()
    torch.manual_seed(0)
    plain = MNIST_model()
    fast.fit_input(x)
    plain.fit_input(x)
    optimizer, _ = make_optimizer(fast, hyper, 5)
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=hyper['lr'], foreach=False)
    for epoch in range(3):
        torch.manual_seed(epoch)
        fast_loss = train(fast, optimizer, None, x, y, hyper)
        torch.manual_seed(epoch)
        batches = ((x[idx], y[idx]) for idx in torch.randperm(len(x)).split(200))
        assert abs(fast_loss - textbook_epoch(plain, plain_optimizer, batches)) < 1e-5
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fast.parameters(), plain.parameters()))


def old_distort(x, strength, elastic):
    """The distortion as the code computed it before warp(): F.affine_grid, F.interpolate, two draws of noise."""
    b = len(x)

    def uniform(size):
        return (torch.rand(b) * 2 - 1) * size * strength

    angle, scale, shear = uniform(0.2), 1 + uniform(0.1), uniform(0.1)
    cos, sin = angle.cos() * scale, angle.sin() * scale
    theta = torch.stack([cos, shear - sin, uniform(0.15), sin, cos, uniform(0.15)], 1).view(b, 2, 3)
    grid = F.affine_grid(theta, (b, 1, 28, 28), align_corners=False)
    field = torch.randn(b, 2, 4, 4) * (elastic * 2 / 28)
    grid = grid + F.interpolate(field, size=(28, 28), mode='bicubic', align_corners=False).permute(0, 2, 3, 1)
    return F.grid_sample(x.view(-1, 1, 28, 28), grid, align_corners=False).flatten(1)


def test_distortions_are_the_warps_they_claim():
    """No strength leaves the images alone; otherwise the same warps as before, positions from one product."""
    x = synthetic_digits(8, seed=0)[0].flatten(1) / 255
    assert torch.allclose(distort(x, dict(distort=0.0, elastic=0.0, deskew=False)), x, atol=1e-5)
    torch.manual_seed(0)
    warped = distort(x, dict(distort=1.0, elastic=1.0, deskew=False))
    torch.manual_seed(0)
    assert torch.allclose(warped, old_distort(x, 1.0, 1.0), atol=1e-5) and not torch.allclose(warped, x, atol=1e-2)


def test_deskewing_once_per_run_is_deskewing_every_batch():
    """Training and validation images are deskewed once; the model used to deskew them in every forward pass."""
    x, y = synthetic_digits(600, seed=0)
    x = x.flatten(1) / 255
    hyper = {**setting(2), 'deskew': True}
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(MNIST_model(deskew=True))
        models[-1].fit_input(models[-1].straighten(x))
    fast, old = models
    assert torch.equal(predict(fast, fast.straighten(x), straightened=True), predict(fast, x))
    optimizer, _ = make_optimizer(fast, hyper, 3)
    old_optimizer = torch.optim.Adam(old.parameters(), lr=hyper['lr'])
    torch.manual_seed(1)
    fast_loss = train(fast, optimizer, None, fast.straighten(x), y, hyper)
    torch.manual_seed(1)  # the old model deskews inside its forward pass, batch by batch
    assert abs(fast_loss - textbook_epoch(old, old_optimizer, generate_batch(x, y, 200))) < 1e-5
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fast.parameters(), old.parameters()))
