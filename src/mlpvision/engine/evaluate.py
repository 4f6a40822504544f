"""Evaluation: top-1 / top-5, mean loss and the confusion matrix (per-class accuracy), summed over processes."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .distributed import DistInfo, all_reduce_sum
from .metrics import progress_bar

__all__ = ['EvalResult', 'evaluate', 'autocast_context']

_logger = logging.getLogger('mlpvision.evaluate')


@dataclass
class EvalResult:
    """Counts over the whole evaluation split (all processes)."""
    n: int
    loss: float
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, classes))
    confusion: torch.Tensor  # (true class, predicted class) counts, int64
    classes: list[str] = field(default_factory=list)
    skipped: int = 0  # corrupt images left out

    @property
    def per_class(self) -> list[float]:
        """Accuracy (percent) of each true class; NaN for classes with no samples."""
        totals = self.confusion.sum(1)
        diag = self.confusion.diagonal()
        return [100.0 * d / t if t else math.nan for d, t in zip(diag.tolist(), totals.tolist(), strict=True)]


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: DataLoader,
        num_classes: int,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        info: DistInfo | None = None,
        classes: list[str] | None = None,
        progress: bool = False,
        desc: str = 'eval',
) -> EvalResult:
    """Evaluate ``model`` on ``loader`` (each process its own shard); the counts are summed over processes.

    Without a progress bar the primary process logs one line when it starts and one when it is done, so a log
    written to a file shows where a long evaluation is.
    """
    info = info or DistInfo(device=device)
    log = info.primary and not progress
    t0 = time.perf_counter()
    if log:
        _logger.info('%s: %d batch%s ...', desc, len(loader), '' if len(loader) == 1 else 'es')
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, top-k correct, skipped
    k = min(5, num_classes)
    for batch in progress_bar(loader, progress and info.primary, desc=desc):
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if len(batch) > 2:  # drop images that were corrupt (replaced by a neighbour) from the counts
            keep = batch[2].to(device) == 0
            sums[2] += (~keep).sum()
            x, y = x[keep], y[keep]
            if not len(y):
                continue
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, y, reduction='sum')
        sums[1] += (logits.topk(k, dim=1).indices == y[:, None]).any(1).sum()
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    all_reduce_sum(confusion, info)
    all_reduce_sum(sums, info)
    model.train(was_training)
    confusion = confusion.view(num_classes, num_classes).cpu()
    n = int(confusion.sum())
    correct = int(confusion.diagonal().sum())
    if log:
        _logger.info('%s: %d images in %.1f s', desc, n, time.perf_counter() - t0)
    return EvalResult(
        n=n, loss=float(sums[0]) / max(n, 1), top1=100.0 * correct / max(n, 1), top5=100.0 * float(sums[1]) / max(n, 1),
        confusion=confusion, classes=list(classes or [str(i) for i in range(num_classes)]), skipped=int(sums[2]))
