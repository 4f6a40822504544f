"""Object detection and instance segmentation: Mask R-CNN or RetinaNet (:mod:`mlpvision.dense.detection`) on any
mlpvision backbone or any timm model, trained through the one run loop (:mod:`mlpvision.engine.run`) as
:class:`DetectTask`.

Data: a COCO-format folder (the COCO 2017 layout as it is: ``DIR/annotations/instances_<split>.json`` and images in
``DIR/<split>/``; or ``DIR/<split>/annotations.json`` with ``DIR/<split>/images/``), or PennFudanPed read directly
(``--dataset pennfudan``: 170 photographs split once by a seeded permutation into ``--train-images`` for training and
the rest held out; :func:`mlpvision.data.detection.pennfudan_split`). Scores: COCO box and mask AP (AP, AP50, AP75,
per category) through :func:`mlpvision.data.detection.coco_evaluate`; best.pth is kept by box AP (mmdet's
``save_best='auto'`` takes the first metric, ``bbox_mAP``).

The defaults follow the AS-MLP Mask R-CNN 1x config (svip-lab/AS-MLP-Object-Detection@
a8d9ef9c5d9fa6fd319f3041d687a69ea00198f6, ``configs/asmlp/mask_rcnn_asmlp_tiny_patch4_shift5_mstrain_480-800_adamw_
1x_coco.py`` with ``_base_/schedules/schedule_1x.py``): AdamW lr 1e-4, betas 0.9 / 0.999, weight decay 0.05 (none on
norms, biases and position tables), 12 epochs, the rate x 0.1 after epochs 8 and 11, mmdet's linear warm-up over 500
steps from 0.001 x lr, horizontal flip 0.5, multi-scale training with the short side drawn from 480, 512, ..., 800
(long side at most 1333), testing at 800 / 1333, 2 images per GPU. Deviation: the config's second AutoAugment policy
(resize to 400-600, a random 384-600 crop, resize again) is not applied; every training image takes the first policy
(multi-scale resize) here. The resize itself is torchvision's ``GeneralizedRCNNTransform`` (a random ``min_size``
per image in training).
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ..data.checks import check_empty_classes, class_counts_line
from ..errors import UsageError
from .distributed import DistInfo
from .metrics import _floats, _pyplot, _save, read_metrics
from .run import Run, StepOutput, Task, resolve_task_config
from .run import fit as fit_task

__all__ = ['DetConfig', 'DetectTask', 'StepWarmupLR', 'build_detector', 'build_detection_data', 'fit_det',
           'resolve_det_config', 'detector_from_checkpoint', 'evaluate_detector', 'DetResult']

_logger = logging.getLogger('mlpvision.detection')

DETECTORS = ('maskrcnn', 'retinanet')
DATASETS = ('coco', 'pennfudan')
# AS-MLP Mask R-CNN config: img_scale [(480, 1333), (512, 1333), ..., (800, 1333)], multiscale_mode='value'
_MSTRAIN = list(range(480, 801, 32))


@dataclass
class DetConfig:
    """Every option of ``mlpvision train --task detect`` (defaults: the AS-MLP Mask R-CNN 1x COCO config)."""
    model: str = 'maskrcnn'
    backbone: str = 'as_mlp_tiny'
    model_kwargs: dict = field(default_factory=dict)  # for the backbone
    pyramid: str = 'auto'
    dataset: str = 'coco'
    data_dir: str = ''
    train_split: str = 'train'
    val_split: str = 'val'
    train_images: int = 120  # pennfudan: images drawn for training (the rest are held out)
    split_seed: int = 0  # pennfudan: the seed of the one permutation that splits it
    drop_degenerate: bool = False  # leave out boxes of zero width or height (COCO train2017 has two) instead of failing
    allow_empty_classes: bool = False  # train a declared category with no object in the training split
    min_size: list = field(default_factory=lambda: list(_MSTRAIN))
    max_size: int = 1333
    eval_min_size: int = 800
    hflip: float = 0.5
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05
    detections_per_img: int = 100
    batch_size: int = 2
    val_batch_size: int = 1
    workers: int = 0
    epochs: int = 12
    lr: float = 1e-4
    weight_decay: float = 0.05
    lr_steps: list = field(default_factory=lambda: [8, 11])
    lr_gamma: float = 0.1
    warmup_steps: int = 500
    warmup_ratio: float = 0.001
    amp: str = 'none'
    clip_grad: float | None = None
    clip_mode: str = 'norm'
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    model_ema_warmup: bool = False
    eval_every: int = 1
    checkpoint_every_steps: int = 0
    log_interval: int = 20
    log_seconds: float = 60.0
    progress: bool | None = None
    plot: bool = True
    tensorboard: bool = True
    output: str = ''
    overwrite: bool = False
    resume: str = ''
    seed: int = 0
    deterministic: bool = False
    device: str = 'auto'
    threads: int | None = None
    compile: bool = False
    channels_last: bool = False
    sync_bn: bool = False

    def validate(self) -> DetConfig:
        def one_of(name: str, allowed: tuple) -> None:
            if getattr(self, name) not in allowed:
                raise UsageError(f'--{name.replace("_", "-")} {getattr(self, name)!r}: choose one of '
                                 f'{", ".join(allowed)}')
        one_of('model', DETECTORS)
        one_of('dataset', DATASETS)
        one_of('amp', ('none', 'bf16', 'fp16'))
        one_of('pyramid', ('auto', 'timm'))
        if not self.data_dir:
            raise UsageError('--data-dir is required (a COCO-format folder, or PennFudanPed with --dataset pennfudan)')
        for name in ('batch_size', 'val_batch_size', 'epochs', 'max_size', 'eval_min_size'):
            if getattr(self, name) < 1:
                raise UsageError(f'--{name.replace("_", "-")} must be positive, got {getattr(self, name)}')
        if not self.min_size or min(self.min_size) < 1:
            raise UsageError(f'--min-size takes one or more positive short sides, got {self.min_size}')
        if self.lr <= 0:
            raise UsageError(f'--lr must be positive, got {self.lr}')
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_det_config(overrides: dict) -> DetConfig:
    """Defaults < the resumed checkpoint's configuration < ``overrides`` (the options given)."""
    values = resolve_task_config(DetConfig, 'detection', overrides)
    for k in ('min_size', 'lr_steps'):
        if k in values:
            values[k] = [int(v) for v in values[k]]
    return DetConfig(**values)


# --- model --------------------------------------------------------------------------------------------------------

class _TimmBody(nn.Module):
    """A timm model's stride 4..32 maps (:class:`mlpvision.dense.timm_backbone.TimmPyramid`) restricted to the
    detector's ``out_indices``: the CNN baselines under Mask R-CNN / RetinaNet."""

    def __init__(self, name: str, out_indices: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__()
        from ..dense.timm_backbone import TimmPyramid
        self.pyramid = TimmPyramid(name, **kwargs)
        self.out_indices = tuple(out_indices)
        self.out_channels = [self.pyramid.out_channels[i] for i in out_indices]
        self.strides = [self.pyramid.strides[i] for i in out_indices]
        self.canvas = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.pyramid(x)
        return [feats[i] for i in self.out_indices]


def build_detector(model: str, backbone: str, num_classes: int, backbone_kwargs: dict | None = None,
                   pyramid: str = 'auto', **kwargs: Any) -> nn.Module:
    """Mask R-CNN or RetinaNet (``model``) on ``backbone``: an mlpvision model through
    :func:`mlpvision.dense.backbone` (``pyramid='auto'``), any other timm model (or every model with
    ``pyramid='timm'``) through its ``features_only`` maps. ``kwargs`` go to torchvision's detector."""
    import timm

    from ..dense import maskrcnn, retinanet
    from ..models import is_model
    if model not in DETECTORS:
        raise UsageError(f'--model {model!r}: the detectors are {", ".join(DETECTORS)}')
    build = maskrcnn if model == 'maskrcnn' else retinanet
    out_indices = (0, 1, 2, 3) if model == 'maskrcnn' else (1, 2, 3)
    if pyramid == 'auto' and is_model(backbone):
        return build(backbone, num_classes, backbone_kwargs=backbone_kwargs, **kwargs)
    if not timm.is_model(backbone):
        from .config import check_trainable_name
        check_trainable_name(backbone, 'backbone')
    return build(_TimmBody(backbone, out_indices, **(backbone_kwargs or {})), num_classes, **kwargs)


def _detector_kwargs(cfg: DetConfig) -> dict:
    kw: dict[str, Any] = dict(min_size=tuple(cfg.min_size), max_size=cfg.max_size)
    if cfg.model == 'maskrcnn':
        kw.update(box_batch_size_per_image=cfg.box_batch_size_per_image, box_score_thresh=cfg.box_score_thresh,
                  box_detections_per_img=cfg.detections_per_img)
    else:
        kw.update(score_thresh=cfg.box_score_thresh, detections_per_img=cfg.detections_per_img)
    return kw


def _set_eval_size(model: nn.Module, cfg: DetConfig, training: bool) -> None:
    """torchvision's transform draws a random ``min_size`` in training and uses the last one in evaluation: the
    training sizes while training, the test size (``--eval-min-size``) otherwise."""
    transform = getattr(model, 'transform', None)
    if transform is not None:
        transform.min_size = tuple(cfg.min_size) if training else (cfg.eval_min_size,)


# --- data ---------------------------------------------------------------------------------------------------------

def build_detection_data(cfg: DetConfig, split: str, train: bool) -> Any:
    """The dataset of ``split`` (``cfg.train_split`` / ``cfg.val_split``) as :class:`CocoDetectionDataset`."""
    from ..data import detection as dd
    transform = dd.RandomHorizontalFlip(cfg.hflip) if train and cfg.hflip else None
    masks = cfg.model == 'maskrcnn'
    if cfg.dataset == 'pennfudan':
        train_names, val_names = dd.pennfudan_split(cfg.data_dir, seed=cfg.split_seed, n_train=cfg.train_images)
        names = train_names if split == cfg.train_split else val_names
        coco = dd.pennfudan_to_coco(cfg.data_dir, names)
        return dd.CocoDetectionDataset(Path(cfg.data_dir) / 'PNGImages', coco, transform=transform, masks=masks)
    image_dir, ann_file = dd.find_coco_split(cfg.data_dir, split)
    return dd.CocoDetectionDataset(image_dir, ann_file, transform=transform, masks=masks,
                                   drop_degenerate=cfg.drop_degenerate)


def _collate(batch: list) -> tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]


# --- evaluation ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_detector(model: nn.Module, loader: Any, dataset: Any, device: torch.device,
                      amp_dtype: torch.dtype | None = None, info: DistInfo | None = None) -> dict[str, Any]:
    """COCO AP of ``model`` over ``loader`` (predictions gathered from every process): ``bbox_AP``, ``bbox_AP50``,
    ``bbox_AP75`` (and ``segm_*`` for Mask R-CNN), in percent, with ``per_category``."""
    from ..data.detection import coco_evaluate, predictions_from_outputs
    from .evaluate import autocast_context
    was_training = model.training
    model.eval()
    preds: list[dict] = []
    masks = getattr(getattr(model, 'roi_heads', None), 'mask_head', None) is not None
    try:
        for images, targets in loader:
            with autocast_context(device, amp_dtype):
                outputs = model([im.to(device) for im in images])
            outputs = [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()}
                       for o in outputs]
            preds += predictions_from_outputs(outputs, [int(t['image_id']) for t in targets], dataset.cat_ids)
    finally:
        model.train(was_training)
    if info is not None and info.distributed:
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, preds)
        preds = [p for part in gathered for p in part]
    return coco_evaluate(dataset.coco, preds, iou_types=('bbox', 'segm') if masks else ('bbox',),
                         classes=dataset.classes)


# --- the task -----------------------------------------------------------------------------------------------------

class StepWarmupLR:
    """mmdet's ``step`` policy with linear warm-up: ``lr x gamma^(milestones passed)`` with milestones at epoch
    boundaries, times ``1 - (1 - i / warmup) (1 - ratio)`` during the first ``warmup`` steps. A function of the
    step alone (nothing to save)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: DetConfig, steps_per_epoch: int) -> None:
        self.optimizer, self.cfg, self.steps = optimizer, cfg, steps_per_epoch

    def rate(self, step: int) -> float:
        c = self.cfg
        lr = c.lr * c.lr_gamma ** sum(step >= m * self.steps for m in c.lr_steps)
        if step < c.warmup_steps:
            lr *= 1 - (1 - step / c.warmup_steps) * (1 - c.warmup_ratio)
        return lr

    def step_update(self, step: int) -> None:
        lr = self.rate(step)
        for g in self.optimizer.param_groups:
            g['lr'] = lr


_COLUMNS = ('epoch', 'step', 'lr', 'train_loss', 'loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness',
            'loss_rpn_box_reg', 'classification', 'bbox_regression', 'bbox_AP', 'bbox_AP50', 'bbox_AP75', 'segm_AP',
            'segm_AP50', 'segm_AP75', 'ema_bbox_AP', 'ema_segm_AP', 'img_per_s', 'epoch_time_s', 'wall_s')


class DetectTask(Task):
    """Mask R-CNN / RetinaNet: torchvision's summed loss dict, COCO AP; best.pth by box AP."""
    name = 'detect'
    columns = _COLUMNS
    score = 'bbox_AP'
    score_label = 'box AP'

    cfg: DetConfig
    final: dict | None = None

    def setup(self, run: Run) -> None:
        from ..data.loader import create_eval_loader, create_train_loader
        cfg, info = self.cfg, run.info
        train_data = build_detection_data(cfg, cfg.train_split, train=True)
        val_data = build_detection_data(cfg, cfg.val_split, train=False)
        if train_data.classes != val_data.classes:
            raise UsageError(f'the training and validation annotations declare other categories '
                             f'({train_data.classes[:5]} vs {val_data.classes[:5]}); use one category list')
        self.classes, self.cat_ids = list(train_data.classes), list(train_data.cat_ids)
        objects = train_data.objects_per_category()
        check_empty_classes(self.classes, objects, f'the training annotations of {cfg.data_dir} ({cfg.train_split})',
                            cfg.allow_empty_classes, unit='objects')
        self.objects_line = class_counts_line(self.classes, objects, 'training objects')
        torch.manual_seed(cfg.seed)  # one initialisation on every process
        self.model = build_detector(cfg.model, cfg.backbone, len(self.classes), cfg.model_kwargs, cfg.pyramid,
                                    **_detector_kwargs(cfg))
        _set_eval_size(self.model, cfg, training=True)
        torch.manual_seed(cfg.seed + info.rank)
        self.train_loader = create_train_loader(train_data, cfg.batch_size, cfg.seed, info.rank, info.world_size,
                                                num_workers=cfg.workers)
        self.train_loader.collate_fn = _collate
        self.val_loader = create_eval_loader(val_data, cfg.val_batch_size, info.rank, info.world_size,
                                             num_workers=cfg.workers)
        self.val_loader.collate_fn = _collate
        self.train_data, self.val_data = train_data, val_data
        self.train_size, self.val_size = len(train_data), len(val_data)
        head = 'Mask R-CNN' if cfg.model == 'maskrcnn' else 'RetinaNet'
        self.description = f'{head}({cfg.backbone}), {len(self.classes)} classes'

    def optimizer(self, run: Run, model: nn.Module) -> tuple[torch.optim.Optimizer, Any, str]:
        from ..dense import param_groups
        cfg = self.cfg
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
        text = (f'optimizer: AdamW lr {cfg.lr:g}, weight decay {cfg.weight_decay:g} (none on norms, biases, '
                f'position tables), x{cfg.lr_gamma:g} after epochs {", ".join(map(str, cfg.lr_steps))}, linear '
                f'warm-up {cfg.warmup_steps} steps from {cfg.warmup_ratio:g} x lr')
        return optimizer, StepWarmupLR(optimizer, cfg, run.steps), text

    def loss(self, run: Run, batch: Any) -> StepOutput:
        device = run.info.device
        images, targets = batch
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = run.model(images, targets)
        loss = sum(losses.values())
        n = len(images)
        return StepOutput(loss, n, {k: float(v.detach()) * n for k, v in losses.items()})

    def train_row(self, sums: dict[str, float], seen: float) -> dict[str, Any]:
        return {k: v / max(seen, 1) for k, v in sums.items()}

    def preflight(self, run: Run) -> None:
        """The first validation image through the detector at the test size, before the first step."""
        if not len(self.val_data):
            raise UsageError(f'the validation split of {self.cfg.data_dir} has no images')
        image, _ = self.val_data[0]
        model = run.state.model
        was_training = model.training
        _set_eval_size(model, self.cfg, training=False)
        model.eval()
        try:
            with torch.no_grad():
                model([image.to(run.info.device)])
        except (ValueError, RuntimeError) as e:
            raise UsageError(f'the detector cannot evaluate a {tuple(image.shape[1:])} image at --eval-min-size '
                             f'{self.cfg.eval_min_size} / --max-size {self.cfg.max_size} with backbone '
                             f'{self.cfg.backbone}: {str(e).splitlines()[0]}') from None
        finally:
            model.train(was_training)

    def evaluate(self, run: Run, model: nn.Module, desc: str) -> dict[str, Any]:
        inner = getattr(model, 'module', model)
        _set_eval_size(inner, self.cfg, training=False)
        res = evaluate_detector(inner, self.val_loader, self.val_data, run.info.device, run.amp_dtype, run.info)
        _set_eval_size(inner, self.cfg, training=True)
        self.final = res
        return {k: v for k, v in res.items() if isinstance(v, float)}

    def after_evaluate(self, run: Run, row: dict[str, Any], best: bool) -> None:
        if self.final is not None:
            write_per_category(run.output / 'per_class.csv', self.final)

    def epoch_line(self, row: dict[str, Any]) -> str:
        if 'bbox_AP' not in row:
            return ''
        mask = f'  mask AP {row["segm_AP"]:.2f}' if 'segm_AP' in row else ''
        return f'box AP {row["bbox_AP"]:.2f} AP50 {row["bbox_AP50"]:.2f}{mask}'

    def meta(self) -> dict:
        c = self.cfg
        return dict(detector=c.model, backbone=c.backbone, model_kwargs=dict(c.model_kwargs), pyramid=c.pyramid,
                    classes=self.classes, cat_ids=self.cat_ids, detector_kwargs=_detector_kwargs(c),
                    eval_min_size=c.eval_min_size)

    def resolved(self) -> dict:
        return dict(num_classes=len(self.classes), classes=self.classes,
                    train_negatives=int(getattr(self.train_data, 'negatives', 0)))

    def start_lines(self, run: Run) -> list[str]:
        c = self.cfg
        negatives = getattr(self.train_data, 'negatives', 0)
        return [f'data: {c.dataset} {c.data_dir}, {self.train_size} training ({negatives} without objects) / '
                f'{self.val_size} validation images, {len(self.classes)} categories',
                f'categories: {self.objects_line}',
                f'augmentation: short side from {sorted(c.min_size)} (long side <= {c.max_size}), hflip {c.hflip:g}; '
                f'evaluation at {c.eval_min_size}']

    def plot(self, metrics_csv: Path, out_png: Path, title: str) -> Path | None:
        return plot_det_curves(metrics_csv, out_png, title)


@dataclass
class DetResult:
    output: Path
    best_ap: float
    best_epoch: int
    final: dict | None
    elapsed_s: float
    params: int
    model: nn.Module


def fit_det(cfg: DetConfig, progress: bool | None = None) -> DetResult:
    """Train the detector ``cfg`` describes; the run folder gets config.yaml, last.pth, best.pth, metrics.csv,
    per_class.csv (AP per category) and curves.png."""
    task = DetectTask(cfg)
    r = fit_task(task, progress)
    return DetResult(r.output_dir, r.best_metric, r.best_epoch, task.final, r.elapsed_s, r.params, r.model)


def detector_from_checkpoint(ckpt: dict, path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The detector a detection checkpoint (best.pth / last.pth) holds, in eval mode at its test size, and its
    metadata."""
    from .._checkpoint import load_weights
    meta = ckpt.get('mlpvision') or {}
    kw = dict(meta.get('detector_kwargs') or {})
    kw['min_size'] = (int(meta.get('eval_min_size', 800)),)
    model = build_detector(meta['detector'], meta['backbone'], len(meta['classes']), meta.get('model_kwargs'),
                           meta.get('pyramid', 'auto'), **kw)
    load_weights(model, ckpt['model'], f'checkpoint {str(path)!r}')
    return model.eval(), meta


def write_per_category(path: Path, result: dict) -> None:
    """AP per category (box, and mask for Mask R-CNN) as CSV, then the overall figures."""
    per = result.get('per_category') or {}
    types = [t for t in ('bbox', 'segm') if t in per]
    names = list(per[types[0]]) if types else []
    tmp = path.with_suffix('.csv.tmp')
    with open(tmp, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['category', *[f'{t}_AP' for t in types]])
        for n in names:
            w.writerow([n, *[_fmt(per[t].get(n)) for t in types]])
        w.writerow(['all', *[_fmt(result.get(f'{t}_AP')) for t in types]])
    os.replace(tmp, path)


def _fmt(v: Any) -> str:
    return '' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.2f}'


def plot_det_curves(metrics_csv: Path, out_png: Path, title: str = '') -> Path | None:
    """Training loss and validation AP per epoch (None without matplotlib)."""
    plt = _pyplot()
    rows = read_metrics(metrics_csv)
    if plt is None or not rows:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(*_floats(rows, 'train_loss'), marker='.')
    a.set(xlabel='epoch', ylabel='train loss (sum of terms)')
    for key, label in (('bbox_AP', 'box AP'), ('bbox_AP50', 'box AP50'), ('segm_AP', 'mask AP')):
        xs, ys = _floats(rows, key)
        if xs:
            b.plot(xs, ys, marker='o', label=label)
    b.set(xlabel='epoch', ylabel='held-out AP (%)')
    b.legend(fontsize=8)
    tmp = Path(out_png).with_suffix('.tmp.png')
    _save(plt, fig, tmp, title)
    os.replace(tmp, out_png)
    return Path(out_png)

