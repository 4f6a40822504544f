"""Knowledge distillation from a teacher network, DeiT-style (``--teacher``, ``--distillation soft|hard``).

The losses are DeiT's (Touvron et al. 2021, "Training data-efficient image transformers & distillation through
attention", §5; facebookresearch/deit@7e160fe ``losses.py`` ``DistillationLoss``), re-written here:

* soft: ``(1 - alpha) * base + alpha * tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))``, the KL summed
  over classes and averaged over the batch (Hinton et al. 2015). DeiT divides the summed KL by the number of logits
  (batch x classes, "the legacy PyTorch behavior", deit issue 61) instead of the batch size, which shrinks the
  distillation term by the class count and so changes what ``alpha`` means from one data set to the next; we use the
  batch mean, the KL divergence as defined, so ``alpha`` weighs the two terms as the formula says.
* hard: ``(1 - alpha) * base + alpha * CE(student, argmax(teacher))``. DeiT's hard distillation is this with its
  default ``alpha`` 0.5, i.e. the paper's 50/50 mix (DeiT eq. in §5 "hard-label distillation"); our default alpha
  is the same 0.5, and another alpha weighs the two terms as for soft.

``base`` is the run's own loss: cross-entropy to the labels (label smoothing as configured), or with Mixup / CutMix
the soft-target cross-entropy to the mixed labels. **Distillation combines with Mixup / CutMix** the way DeiT's
training script does: the teacher sees the same mixed (and otherwise augmented) batch as the student, so its
predictions describe the image the student is shown, and the base loss keeps the mixed soft targets. (Teacher and
student must see the same view for distillation to match functions, Beyer et al. 2022, "Knowledge distillation: A
good teacher is patient and consistent".)

**One head, no distillation token.** DeiT's ViTs carry a second (distillation) token and head that the distillation
term trains while the class token follows the labels. mlpvision's models have one classification head, so both terms
act on the same logits: the student's one output is pulled towards the labels and towards the teacher ("hard" is then
DeiT's hard-label distillation with the class token only). This is the ResMLP paper's setting for its distilled rows
(Touvron et al. 2021, "ResMLP", arXiv:2105.03404: ResMLP trained with DeiT's recipe and distillation from a convnet
teacher; the released ``resmlp_*_dist`` weights of facebookresearch/deit README_resmlp.md are "the distilled version",
and the official ``resmlp_models.py`` has a single ``head`` and no distillation token). DeiT's public
``DistillationLoss`` refuses a model without a second output, so those runs distilled through the one head; we do the
same. A distillation token is a transformer construct: a patch-wise MLP has no token to add it to without changing the
architecture whose claims we reproduce.

The teacher is built by :func:`build_teacher` and runs in eval mode, without gradients, under the student's autocast,
on the student's inputs (the same size and normalisation).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checkpoint import CheckpointError, load_weights, unwrap_state_dict
from ..data.checks import check_class_names
from ..errors import UsageError
from .checkpoint import load_checkpoint_file
from .config import check_trainable_name

__all__ = ['distillation_loss', 'Distiller', 'build_teacher']

_logger = logging.getLogger('mlpvision.train')


def distillation_loss(base_loss: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      kind: str, alpha: float, tau: float = 1.0) -> torch.Tensor:
    """The base loss mixed with the distillation term of ``kind`` ('soft' or 'hard'); see the module docstring.

    Args:
        base_loss: the run's loss on the labels (a scalar).
        student_logits / teacher_logits: (B, num_classes); computed in float32 whatever the autocast dtype.
        alpha: weight of the distillation term (the base loss gets ``1 - alpha``).
        tau: soft distillation temperature.
    """
    s, t = student_logits.float(), teacher_logits.detach().float()
    if kind == 'soft':
        # kl_div(log q, log p, log_target=True) = sum p (log p - log q): KL(teacher || student), 'batchmean' over B
        term = F.kl_div(F.log_softmax(s / tau, dim=1), F.log_softmax(t / tau, dim=1), reduction='batchmean',
                        log_target=True) * (tau * tau)
    elif kind == 'hard':
        term = F.cross_entropy(s, t.argmax(dim=1))
    else:
        raise UsageError(f"unknown distillation {kind!r}; choose one of soft, hard")
    return base_loss * (1 - alpha) + term * alpha


class Distiller:
    """A frozen teacher and the rule that mixes its predictions into the loss.

    Not an ``nn.Module`` on purpose: the teacher's weights are not the student's, so they stay out of the student's
    optimizer, state_dict and checkpoints (a resumed run rebuilds the teacher from ``--teacher-checkpoint``).
    """

    def __init__(self, teacher: nn.Module, kind: str, alpha: float, tau: float, description: str = '') -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.kind, self.alpha, self.tau = kind, alpha, tau
        self.description = description

    def __call__(self, x: torch.Tensor, student_logits: torch.Tensor, base_loss: torch.Tensor) -> torch.Tensor:
        """The loss for batch ``x`` (called inside the student's autocast, so the teacher runs under it too)."""
        if self.teacher.training:  # a caller's .train() on everything must not turn dropout or BN updates on
            self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return distillation_loss(base_loss, student_logits, teacher_logits, self.kind, self.alpha, self.tau)


def build_teacher(name: str, checkpoint: str, classes: list[str], in_chans: int, img_size: tuple[int, int],
                  device: torch.device, channels_last: bool = False) -> tuple[nn.Module, str]:
    """The teacher ``name`` with the weights of ``checkpoint``, frozen, in eval mode on ``device``.

    An mlpvision training checkpoint (``mlpvision train`` output) gives the teacher its constructor arguments and
    class names; any other file (official, timm or a bare state_dict) is loaded strictly into ``name`` built for the
    data set's class count (or the checkpoint classifier's, which must then equal it), ``in_chans`` and, for a model
    built for one input size, ``img_size``. A forward pass on one blank batch checks that the teacher takes the
    student's inputs and predicts the data set's classes.

    Returns:
        (teacher, a one-line description for the logs and config.yaml).

    Raises:
        UsageError: unknown name, a checkpoint of another model, another class count or class names, inputs the
            teacher does not take.
        CheckpointError: the file cannot be read or does not fit the model.
    """
    from timm.models import get_pretrained_cfg

    from ..models import create_any_model, is_model

    base = name.split('.', 1)[0]
    check_trainable_name(name, 'teacher model')
    obj = load_checkpoint_file(checkpoint)
    meta = obj.get('mlpvision') if isinstance(obj.get('mlpvision'), dict) else None
    sd = unwrap_state_dict(obj)
    if not sd:
        raise CheckpointError(f'teacher checkpoint {checkpoint!r} holds no weights')
    teacher_classes: list[str] | None = None
    if meta is not None and meta.get('model_name'):
        if meta['model_name'].split('.', 1)[0] != base:
            raise UsageError(f'teacher checkpoint {checkpoint!r} is a {meta["model_name"]}, not a {name}; pass '
                             f'--teacher {meta["model_name"]}')
        kwargs: dict[str, Any] = dict(meta.get('model_kwargs') or {})
        teacher_classes = list(meta.get('classes') or []) or None
    else:
        pcfg = get_pretrained_cfg(base)
        kwargs = dict(num_classes=len(classes), in_chans=in_chans)
        classifier = pcfg.classifier if pcfg is not None else None
        key = f'{classifier}.weight' if isinstance(classifier, str) else None
        if key in sd and sd[key].ndim >= 1:  # the checkpoint's class count, so that the check below names it
            kwargs['num_classes'] = int(sd[key].shape[0])
        if pcfg is not None and pcfg.fixed_input_size and is_model(base):
            kwargs['img_size'] = img_size[0]
    try:
        # the teacher's random initialisation (overwritten at once) must not draw from the run's RNG stream, so that
        # a distilled run sees the augmentations, mixing and drop-path draws of the same run without a teacher
        with torch.random.fork_rng(devices=[]):
            teacher = create_any_model(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f'teacher {name} cannot be built with {kwargs} ({e})') from None
    load_weights(teacher, sd, f'teacher checkpoint {checkpoint!r}')
    teacher.eval().requires_grad_(False).to(device)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            out = teacher(torch.zeros(1, in_chans, *img_size, device=device))
    except (RuntimeError, ValueError, AssertionError) as e:
        raise UsageError(f'teacher {name} does not take the training inputs ({in_chans}x{img_size[0]}x{img_size[1]}):'
                         f' {str(e).splitlines()[0][:160]}') from None
    n_out = out.shape[-1] if isinstance(out, torch.Tensor) and out.ndim == 2 else None
    if n_out != len(classes):
        raise UsageError(f'teacher {name} from {checkpoint!r} predicts {n_out} classes but the data set has '
                         f'{len(classes)}; distil from a teacher trained (or fine-tuned) on these classes')
    if teacher_classes is not None:
        check_class_names(teacher_classes, classes, f'teacher checkpoint {checkpoint!r}', 'the data set',
                          fix='distil from a teacher trained on this data set', relabel_flag=None)
    if meta is not None and isinstance(meta.get('data_config'), dict):
        dc = meta['data_config']
        if list(dc.get('input_size', []))[1:] not in ([], list(img_size)):
            _logger.warning('the teacher was trained at %s but sees the student inputs at %s', dc['input_size'],
                            list(img_size))
    params = sum(p.numel() for p in teacher.parameters())
    shown = {k: v for k, v in kwargs.items() if k not in ('num_classes', 'in_chans', 'img_size')}
    extra = ', '.join(f'{k}={v}' for k, v in shown.items())
    return teacher, f'{name} ({extra + "; " if extra else ""}{params:,} params, from {checkpoint})'
