"""Train UperNet semantic segmentation: `mlpvision train-seg --backbone NAME --dataset camvid --data-dir DIR ...`.

The defaults are the AS-MLP ADE20K UperNet config (AdamW 6e-5, poly with 1500 warm-up steps, crop 512, batch 16);
see :mod:`mlpvision.engine.segmentation`. The run folder (--output) receives last.pth (resumable: --resume auto),
best.pth (best validation mIoU), metrics.csv, per_class.csv, confusion.csv and curves.png. Options not given on a
resumed run come from its checkpoint. Multi-GPU: `torchrun --nproc_per_node=N -m mlpvision.cli.main train-seg ...`.
Ctrl-C saves last.pth at the next step and prints the command that resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

from ._common import MODEL_KWARGS_HELP, parse_model_kwargs

HELP = 'train UperNet segmentation: the same as train --task segment (kept for old commands)'

_HELP = {
    'backbone': 'backbone: an mlpvision model (as_mlp_tiny, hire_mlp_tiny, ...) or a timm CNN (resnet18, ...)',
    'model_kwargs': MODEL_KWARGS_HELP + ', for the backbone',
    'pyramid': "'auto' (mlpvision.dense.backbone for mlpvision models, timm features_only for timm CNNs) or 'timm' "
               "(features_only for every backbone)",
    'channels': 'UPerHead channels',
    'aux_channels': 'FCN auxiliary head channels',
    'aux_weight': 'auxiliary loss weight; 0 drops the auxiliary head',
    'dataset': "'camvid' (the SegNet tutorial's CamVid folder) or 'folder' (<split>/images + <split>/masks)",
    'data_dir': 'the dataset folder',
    'num_classes': "class ids in the masks (needed for 'folder')",
    'ignore_index': 'mask value left out of the loss and metrics (CamVid void becomes it)',
    'base_size': 'short side the images are resized to (evaluation) and scaled around (training)',
    'crop': 'training crop H W',
    'ratio_range': 'random scale range around --base-size',
    'hflip': 'horizontal flip probability',
    'photometric': "mmseg's photometric distortion",
    'val_batch_size': 'evaluation batch (images of one size only when > 1)',
    'workers': 'data-loader processes',
    'epochs': 'passes over the training split',
    'warmup_steps': 'linear warm-up steps', 'warmup_ratio': 'warm-up start as a fraction of --lr',
    'poly_power': 'poly decay power', 'min_lr': 'final learning rate',
    'amp': "autocast: 'none', 'bf16' (CPU or GPU) or 'fp16' (GPU)",
    'eval_mode': "'whole' image or 'slide' window evaluation",
    'slide_crop': 'sliding-window size H W', 'slide_stride': 'sliding-window stride H W',
    'eval_every': 'evaluate every N epochs', 'checkpoint_every_steps': 'also save last.pth every N steps (0: only '
                                                                       'at epoch ends)',
    'log_interval': 'log the loss every N steps', 'output': 'the run folder',
    'overwrite': 'start again in an --output that holds a run',
    'resume': "'auto' (--output's last.pth) or a checkpoint path",
    'device': "'auto', 'cpu', 'cuda' or 'cuda:N'", 'threads': 'torch compute threads (default: cores - workers)',
    'sync_bn': 'SyncBatchNorm under DDP',
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mlpvision.engine.segmentation import SegConfig

    for f in dataclasses.fields(SegConfig):
        flag = '--' + f.name.replace('_', '-')
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        text = default if not isinstance(default, list) else ' '.join(map(str, default))
        help_ = f'{_HELP.get(f.name, f.name.replace("_", " "))} (default: {text if text not in ("", {}) else "none"})'
        help_ = help_.replace('%', '%%')
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif isinstance(default, list):
            p.add_argument(flag, dest=f.name, type=float if f.name == 'ratio_range' else int, nargs=2, default=None,
                           help=help_)
        elif isinstance(default, dict):
            p.add_argument(flag, dest=f.name, nargs='*', metavar='KEY=VALUE', default=None, help=help_)
        else:
            tp = float if isinstance(default, float) else int if f.name in ('num_classes', 'threads') or \
                isinstance(default, int) else str
            p.add_argument(flag, dest=f.name, type=tp, default=None, help=help_)


def run(args: argparse.Namespace) -> int:
    from mlpvision.engine.segmentation import SegConfig, fit_seg, resolve_seg_config

    overrides = {}
    for f in dataclasses.fields(SegConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            overrides[f.name] = parse_model_kwargs(v) if f.name == 'model_kwargs' else v
    result = fit_seg(resolve_seg_config(overrides))
    if int(os.environ.get('RANK', '0')) == 0:
        print(f'\ntrained UperNet({result.model.backbone.__class__.__name__}): {result.params:,} params, '
              f'{result.elapsed_s:.0f} s')
        if result.final is not None:
            print(f'validation: mIoU {result.final.miou:.2f}%  pixel acc {result.final.pixel_acc:.2f}%  '
                  f'(best mIoU {result.best_miou:.2f}% at epoch {result.best_epoch})')
        print(f'run folder: {result.output} (best.pth, last.pth, metrics.csv, per_class.csv, curves.png)')
    return 0
