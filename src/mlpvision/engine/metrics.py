"""Run records: ``metrics.csv`` (one row per epoch), TensorBoard scalars (when tensorboard is installed), the
training-curve plot and the confusion-matrix plot (matplotlib, no display needed)."""
from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ['METRIC_COLUMNS', 'MetricsLog', 'read_metrics', 'run_config', 'eval_split_label', 'plot_curves',
           'plot_runs', 'plot_confusion', 'progress_bar', 'write_per_class_csv']

METRIC_COLUMNS = ('epoch', 'step', 'lr', 'train_loss', 'train_acc1', 'val_loss', 'val_acc1', 'val_acc5',
                  'ema_val_loss', 'ema_val_acc1', 'ema_val_acc5', 'img_per_s', 'epoch_time_s', 'wall_s',
                  'corrupt_skipped', 'val_corrupt_skipped')


def progress_bar(iterable: Iterable, enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar on stderr when ``enabled`` and tqdm is installed; otherwise the iterable itself."""
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)
        except ImportError:
            pass
    return iterable


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


class MetricsLog:
    """Appends epoch rows to ``metrics.csv`` (and TensorBoard); on resume, rows of epochs not yet finished in the
    checkpoint are dropped so no epoch appears twice."""

    def __init__(self, output_dir: str | Path, resume_epoch: int = 0, tensorboard: bool = True,
                 columns: Iterable[str] = METRIC_COLUMNS) -> None:
        self.path = Path(output_dir) / 'metrics.csv'
        self.columns = tuple(columns)
        rows = [r for r in read_metrics(self.path) if int(r['epoch']) <= resume_epoch] if resume_epoch else []
        with open(self.path, 'w', newline='') as f:
            w = csv.DictWriter(f, self.columns)
            w.writeheader()
            w.writerows({k: r.get(k, '') for k in self.columns} for r in rows)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=str(Path(output_dir) / 'tensorboard'))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def write(self, row: Mapping[str, Any]) -> None:
        def fmt(v: Any) -> str:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return ''
            return f'{v:.6g}' if isinstance(v, float) else str(v)
        with open(self.path, 'a', newline='') as f:
            csv.DictWriter(f, self.columns).writerow({k: fmt(row.get(k)) for k in self.columns})
        if self.tb is not None:
            for k, v in row.items():
                if k not in ('epoch', 'step') and isinstance(v, (int, float)) and not math.isnan(v):
                    self.tb.add_scalar(k, v, row['epoch'])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _floats(rows: list[dict[str, str]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        if r.get(key):
            xs.append(int(r['epoch']))
            ys.append(float(r[key]))
    return xs, ys


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), or None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt: Any, fig: Any, out_png: str | Path, title: str) -> Path:
    """Title, lay out, write ``out_png`` at 100 dpi and close ``fig``."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


# data sets whose evaluation split is their test split (torchvision's CIFAR has only train and test)
_TEST_SPLIT_DATASETS = ('cifar10', 'cifar100')


def eval_split_label(config: Mapping[str, Any]) -> str:
    """What a run's evaluation ("val_*" columns) was scored on, in words, from its configuration (``config.yaml``'s
    ``dataset`` and ``val_split``): 'test' for CIFAR and for an image folder whose evaluation folder is ``test/``,
    the folder's name for another image folder, else 'validation'."""
    dataset, folder = config.get('dataset'), config.get('val_split') or 'val'
    if dataset in _TEST_SPLIT_DATASETS:
        return 'test'
    if dataset == 'imagefolder' and folder != 'val':
        return str(folder)
    return 'validation'


def run_config(run_dir: str | Path) -> dict | None:
    """The ``config.yaml`` of the run folder ``run_dir`` as a dict; None when it is missing or not a YAML mapping."""
    import yaml

    try:
        config = yaml.safe_load((Path(run_dir) / 'config.yaml').read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def _run_split_label(run_dir: Path) -> str | None:
    """:func:`eval_split_label` of the run whose folder is ``run_dir``; None without a readable config.yaml."""
    config = run_config(run_dir)
    return None if config is None else eval_split_label(config)


def plot_curves(metrics_csv: str | Path, out_png: str | Path, title: str = '',
                eval_split: str = 'validation') -> Path | None:
    """Loss and accuracy per epoch from ``metrics.csv``; None when matplotlib is missing or there are no rows.
    ``eval_split`` names what the "val" columns were scored on (:func:`eval_split_label`)."""
    rows = read_metrics(metrics_csv)
    if not rows:
        return None
    plt = _pyplot()
    if plt is None:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (('train_loss', 'train'), ('val_loss', eval_split)):
        ax1.plot(*_floats(rows, key), marker='.', label=label)
    ax1.set(xlabel='epoch', ylabel='loss', title='loss')
    for key, label in (('train_acc1', 'train (augmented)'), ('val_acc1', f'{eval_split} top-1'),
                       ('val_acc5', f'{eval_split} top-5'), ('ema_val_acc1', f'EMA {eval_split} top-1')):
        xs, ys = _floats(rows, key)
        if xs:
            ax2.plot(xs, ys, marker='.', label=label)
    ax2.set(xlabel='epoch', ylabel='accuracy (%)', title='accuracy')
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(plt, fig, out_png, title)


def plot_runs(runs: Mapping[str, str | Path], out_png: str | Path, title: str = '',
              eval_split: str | None = None) -> Path | None:
    """Several runs side by side: evaluation top-1, evaluation loss and training loss per epoch.

    Args:
        runs: label -> run folder (holding ``metrics.csv``) or the ``metrics.csv`` itself, in legend order.
        eval_split: what the runs were evaluated on, for the panel titles ('test' for CIFAR); None reads it from each
            run folder's ``config.yaml`` (:func:`eval_split_label`), 'validation' where the runs disagree or have none.

    Returns:
        ``out_png``, or None without matplotlib. Raises ValueError naming a run without epoch rows.
    """
    tables, splits = {}, set()
    for label, path in runs.items():
        path = Path(path)
        csv_path = path / 'metrics.csv' if path.is_dir() else path
        rows = read_metrics(csv_path)
        if not rows:
            raise ValueError(f'run {label!r}: no epoch rows in {csv_path} (has it finished an epoch?)')
        tables[label] = rows
        splits.add(_run_split_label(csv_path.parent))
    if eval_split is None:
        eval_split = splits.pop() if len(splits) == 1 and None not in splits else 'validation'
    plt = _pyplot()
    if plt is None:
        return None
    from matplotlib.ticker import MaxNLocator
    panels = (('val_acc1', f'{eval_split} top-1 (%)'), ('val_loss', f'{eval_split} loss'),
              ('train_loss', 'training loss (the run\'s own objective)'))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for ax, (key, name) in zip(axes, panels, strict=True):
        for label, rows in tables.items():
            ax.plot(*_floats(rows, key), marker='.', label=label)
        ax.set(xlabel='epoch', title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        ax.grid(alpha=0.3)
    axes[0].legend()
    return _save(plt, fig, out_png, title)


def plot_confusion(confusion: torch.Tensor, classes: list[str], out_png: str | Path, title: str = '',
                   max_classes: int = 100, figure: list | None = None) -> Path | None:
    """Row-normalised confusion matrix (true class down, predicted across); None above ``max_classes`` classes or
    without matplotlib. ``figure``: a list the matplotlib figure is appended to (closed, still measurable)."""
    n = confusion.shape[0]
    if n > max_classes:
        return None
    plt = _pyplot()
    if plt is None:
        return None
    cm = confusion.double()
    norm = cm / cm.sum(1, keepdim=True).clamp(min=1)
    size = min(4 + 0.18 * n, 22)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm.numpy(), cmap='Blues', vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='fraction of the true class')
    if n <= 30:
        names = [str(c) for c in classes]
        # names wider than a cell overlap when level (CIFAR-10's 'airplane', 'automobile'): stand them upright
        level = n <= 10 and max(map(len, names)) <= 3
        ax.set_xticks(range(n), names, rotation=0 if level else 90)
        ax.set_yticks(range(n), names)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha='center', va='center',
                            color='white' if norm[i, j] > 0.5 else 'black', fontsize=8)
    ax.set(xlabel='predicted', ylabel='true', title=title or 'confusion matrix')
    fig.tight_layout()
    if figure is not None:  # the caller (a test) inspects the figure itself
        figure.append(fig)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def write_per_class_csv(confusion: torch.Tensor, classes: list[str], path: str | Path) -> Path:
    path = Path(path)
    totals, diag = confusion.sum(1).tolist(), confusion.diagonal().tolist()
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(('class', 'images', 'correct', 'accuracy'))
        for c, t, d in zip(classes, totals, diag, strict=True):
            w.writerow((c, t, d, f'{100.0 * d / t:.2f}' if t else ''))
    return path
