"""The plots of a run and of its evaluation, each written whole."""

import os
import statistics

import matplotlib.pyplot as plt
import torch

from atomic import save_atomic, save_csv


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
        ax.locator_params(axis='x', integer=True, min_n_ticks=1)  # whole epochs, also for a run of a few
        ax.grid(alpha=0.3)
        ax.legend(loc='lower right')
    fig.tight_layout()
    save_figure(fig, path)


def plot_learning_curves(histories, path):
    """Training and validation loss per epoch, one panel per run {title: history}, the best epoch marked: where
    the validation loss turns up while the training loss falls, the network overfits."""
    fig, axes = plt.subplots(1, len(histories), figsize=(4.5 * len(histories), 3.6), squeeze=False, sharey=True)
    for ax, (title, history) in zip(axes[0], histories.items()):
        epochs = range(1, len(history['epochs']) + 1)
        for key, label in (('train_loss', 'training loss'), ('val_loss', 'validation loss')):
            ax.plot(epochs, [e[key] for e in history['epochs']], marker='o' if len(epochs) == 1 else '', label=label)
        ax.axvline(history['best_epoch'], color='tab:red', linestyle=':', label=f'best epoch {history["best_epoch"]}')
        ax.set(title=title, xlabel='epoch', ylabel='loss (log scale)', yscale='log')
        ax.locator_params(axis='x', integer=True, min_n_ticks=1)
        ax.grid(alpha=0.3)
        ax.legend()  # where it hides the fewest points
    fig.tight_layout()
    save_figure(fig, path)


def plot_weight_decay(sweep, path):
    """Test accuracy against weight decay, mean ± std over seeds: a line per optimizer {optimizer: {lambda: runs}}."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for optimizer, points in sweep.items():
        acc = [[100 * r['accuracy'] for r in results] for results in points.values()]
        stds = [statistics.stdev(a) if len(a) > 1 else 0 for a in acc]
        label = optimizer + (' (decoupled decay)' if optimizer == 'AdamW' else ' (L2)')
        ax.errorbar(list(points), list(map(statistics.mean, acc)), yerr=stds, capsize=3, marker='o', label=label)
    ax.set_xscale('symlog', linthresh=1e-5)  # a log axis that also shows lambda = 0
    ax.set(title='Weight decay sweep (mean ± std over seeds)', xlabel='weight decay λ', ylabel='test accuracy (%)')
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_mistakes(result, x, y, title, out_dir):
    """A run's confusion matrix of the test split (a picture and a CSV) and its most confident mistakes, each with the
    probability of its true and of its predicted digit."""
    probabilities = result['logits'].double().softmax(1)  # float32 rounds the most confident mistakes to 1
    confidence, predicted = probabilities.max(1)
    counts = torch.bincount(y * 10 + predicted, minlength=100).view(10, 10)
    rows = [['true \\ predicted', *range(10)]] + [[i, *row] for i, row in enumerate(counts.tolist())]
    save_csv(os.path.join(out_dir, 'confusion_matrix.csv'), rows)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(counts.log1p().numpy(), cmap='Blues')  # log shading, so that a few mistakes show beside a thousand hits
    for i, row in enumerate(counts.tolist()):
        for j, n in enumerate(row):
            ax.text(j, i, n, ha='center', va='center', fontsize=8, color='white' if i == j else 'black')
    ax.set(xticks=range(10), yticks=range(10), xlabel='predicted digit', ylabel='true digit')
    ax.set_title(f'{title}: confusion matrix of the test split')
    save_figure(fig, os.path.join(out_dir, 'confusion_matrix.png'))
    wrong = (predicted != y).nonzero()[:, 0]
    worst = wrong[confidence[wrong].argsort(descending=True)[:16]].tolist()
    fig = plt.figure(figsize=(12, 4.2), layout='constrained')
    for k, i in enumerate(worst):
        ax = fig.add_subplot(2, 8, k + 1, xticks=[], yticks=[])
        ax.imshow(x[i].view(28, 28).numpy(), cmap='gray_r')
        true = f'true {y[i]} ({100 * probabilities[i, y[i]]:.2g}%)'
        ax.set_title(f'{true}\npredicted {predicted[i]} ({100 * confidence[i]:.1f}%)', fontsize=9)
    fig.suptitle(f'{title}: the most confident mistakes on the test split')
    save_figure(fig, os.path.join(out_dir, 'mistakes.png'))
