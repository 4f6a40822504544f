"""The training configuration: defaults, recipe files (``recipes/*.yaml``) and command-line overrides.

Precedence: :class:`TrainConfig` defaults < a recipe < explicit overrides (command-line flags). The resolved
configuration (plus what was derived at run time: world size, global batch, scaled learning rates, input size) is
written as ``config.yaml`` beside the checkpoints.

Learning rate: ``lr`` is given at the reference global batch ``lr_base_size`` (the papers state theirs that way) and
scaled to the run's global batch ``batch_size * world_size`` by ``lr_scale``: ``linear`` (lr * global / ref),
``sqrt`` (lr * sqrt(global / ref)) or ``none``. ``warmup_lr`` and ``min_lr`` are scaled the same way when
``scale_warmup_min_lr`` is true (Swin-based codebases: AS-MLP, Strip-MLP, RepMLPNet) and left as given otherwise
(DeiT-based: Hire-MLP, ResMLP).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.datasets import DATASETS
from ..errors import UsageError

__all__ = ['TrainConfig', 'load_recipe', 'recipe_task', 'find_recipe', 'recipe_dir', 'list_recipes', 'make_config',
           'scaled_lrs', 'config_fields', 'check_model_name', 'check_trainable_name', 'RECIPE_META_KEYS']

RECIPE_META_KEYS = ('description', 'source', 'sources', 'notes', 'task')
OPTIMIZERS = ('adamw', 'lamb', 'sgd', 'momentum', 'adam', 'lars', 'rmsprop')
SCHEDULES = ('cosine', 'step', 'constant', 'none')
AMP = ('none', 'bf16', 'fp16')
DISTILLATION = ('none', 'soft', 'hard')


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=dict(help=help, **kw))
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass
class TrainConfig:
    # data
    dataset: str = _f('digits', f'one of {", ".join(DATASETS)}')
    data_dir: str | None = _f(None, 'dataset folder (imagefolder: the one holding train/ and val/)')
    download: bool = _f(False, 'download CIFAR / Caltech-101 into --data-dir when missing (needs internet)')
    train_split: str = _f('train', 'imagefolder: name of the training folder')
    val_split: str = _f('val', 'imagefolder: name of the validation folder')
    fake_size: int = _f(256, 'fake: number of synthetic training images (val: a quarter, at least 8)')
    fake_classes: int = _f(10, 'fake: number of classes')
    skip_corrupt: bool = _f(False, 'skip (and count) images that cannot be decoded instead of stopping')
    allow_empty_classes: bool = _f(False, 'train classes that have no training images (segmentation: no pixel) '
                                          'instead of stopping')
    img_size: int | None = _f(None, "input size (square); default: the model's")
    in_chans: int | None = _f(None, "input channels; default: the dataset's (1 for digits, 3 otherwise)")
    mean: list[float] | None = _f(None, "normalisation mean; default: the model's cfg")
    std: list[float] | None = _f(None, "normalisation std; default: the model's cfg")
    interpolation: str | None = _f(None, "resize interpolation (bilinear, bicubic); default: the model's cfg")
    crop_pct: float | None = _f(None, "eval centre-crop fraction; default: the model's cfg")
    train_crop: str = _f('rrc', "'rrc' (RandomResizedCrop) or 'pad' (random crop after 4 px padding)")
    scale: list[float] | None = _f(None, 'RandomResizedCrop area range (default 0.08 1)')
    ratio: list[float] | None = _f(None, 'RandomResizedCrop aspect range (default 0.75 1.333)')
    hflip: float = _f(0.5, 'horizontal flip probability')
    color_jitter: float = _f(0.4, 'colour jitter strength (0: off; off anyway with RandAugment)')
    aa: str | None = _f(None, "auto-augment policy, e.g. 'rand-m9-mstd0.5-inc1' (RandAugment); none: off")
    reprob: float = _f(0.0, 'random erasing probability')
    remode: str = _f('pixel', 'random erasing mode')
    recount: int = _f(1, 'random erasing count')
    aug_repeats: int = _f(0, 'repeated augmentation: copies of each image per epoch (0: off; DeiT uses 3)')
    batch_size: int = _f(64, 'batch size per process')
    val_batch_size: int | None = _f(None, 'eval batch size per process (default: 2 x batch size)')
    workers: int = _f(2, 'data loading processes per training process (0: load in the main process)')
    data_in_memory: bool = _f(False, 'decode the data set once and augment whole batches in the training process '
                                     '(pad-crop, flip, normalise; for data sets that fit in memory: CIFAR-10 is '
                                     '147 MiB decoded); needs --train-crop pad and no colour jitter, RandAugment, '
                                     'random erasing or repeated augmentation')
    data_cache: str | None = _f(None, 'with --data-in-memory: folder for the decoded arrays, reused by later runs '
                                      '(default: the run folder)')
    pin_memory: bool = _f(True, 'pin host memory (CUDA only)')
    # model
    model: str = _f('resmlp_s12', 'an mlpvision model (`mlpvision models --names-only`) or any timm model, e.g. '
                                  'a convnet teacher for --distillation')
    model_kwargs: dict = _f({}, 'extra constructor arguments: KEY=VALUE pairs, values read as Python literals, '
                                'e.g. embed_dim=128 depth=4')
    drop_rate: float | None = _f(None, "dropout rate (default: the model's)")
    drop_path_rate: float | None = _f(None, "stochastic depth rate (default: the model's)")
    finetune: str | None = _f(None, 'initialise from WEIGHTS: NAME.TAG (released weights, downloaded once), a '
                                    'checkpoint file (ours, official or timm) or a convert folder; a head of another '
                                    'size is replaced by a new one')
    relabel: bool = _f(False, "with --finetune: keep the checkpoint's classifier for a data set whose class names "
                              "differ, its outputs read as the new classes by position")
    sync_bn: bool = _f(False, 'convert BatchNorm to SyncBatchNorm (distributed runs)')
    channels_last: bool = _f(False, 'channels-last memory format')
    grad_checkpointing: bool = _f(False, 'gradient checkpointing (less memory, more compute)')
    compile: bool = _f(False, 'torch.compile the model')
    # optimisation
    opt: str = _f('adamw', f'optimizer: {", ".join(OPTIMIZERS)} (any timm optimizer name works)')
    lr: float = _f(1e-3, 'peak learning rate at the reference global batch --lr-base-size')
    lr_base_size: int = _f(512, 'the global batch size --lr refers to')
    lr_scale: str = _f('linear', 'how lr follows the global batch: linear, sqrt or none')
    scale_warmup_min_lr: bool = _f(True, 'scale warmup_lr and min_lr like lr')
    opt_eps: float | None = _f(None, "optimizer epsilon (default: the optimizer's)")
    opt_betas: list[float] | None = _f(None, "optimizer betas (default: the optimizer's)")
    momentum: float = _f(0.9, 'SGD momentum')
    weight_decay: float = _f(0.05, "weight decay (never on the model's no_weight_decay() set, biases and norms)")
    clip_grad: float | None = _f(None, 'clip gradients to this norm (default: no clipping)')
    clip_mode: str = _f('norm', "gradient clipping mode: 'norm', 'value' or 'agc'")
    sched: str = _f('cosine', f'learning-rate schedule: {", ".join(SCHEDULES)}; updated every step')
    epochs: int = _f(300, 'epochs')
    warmup_epochs: float = _f(0, 'linear warmup epochs')
    warmup_lr: float = _f(1e-6, 'learning rate at the start of warmup (see scale_warmup_min_lr)')
    min_lr: float = _f(1e-5, 'learning rate at the end of the cosine (see scale_warmup_min_lr)')
    decay_epochs: float = _f(30, 'step schedule: epochs between decays')
    decay_rate: float = _f(0.1, 'step schedule: decay factor')
    smoothing: float = _f(0.1, 'label smoothing')
    mixup: float = _f(0.0, 'mixup alpha (0: off)')
    cutmix: float = _f(0.0, 'cutmix alpha (0: off)')
    mixup_prob: float = _f(1.0, 'probability of mixup or cutmix per batch')
    mixup_switch_prob: float = _f(0.5, 'probability of cutmix instead of mixup when both are on')
    mixup_mode: str = _f('batch', "mixup mode: 'batch', 'pair' or 'elem'")
    model_ema: bool = _f(False, 'keep an exponential moving average of the weights (timm ModelEmaV3)')
    model_ema_decay: float = _f(0.9998, 'EMA decay')
    model_ema_warmup: bool = _f(False, 'EMA decay warmup (lower decay early in training)')
    amp: str = _f('none', 'mixed precision: none, bf16 (CPU or CUDA) or fp16 (CUDA, with a gradient scaler)')
    # knowledge distillation (DeiT's losses through the model's one head; see mlpvision.engine.distill)
    teacher: str | None = _f(None, 'teacher model for --distillation: any mlpvision or timm model name')
    teacher_checkpoint: str | None = _f(None, "the teacher's weights: an mlpvision training checkpoint (its model "
                                              "arguments are used) or a state_dict file (official or timm keys)")
    distillation: str = _f('none', "knowledge distillation: none, soft (KL to the teacher's softened "
                                   "probabilities) or hard (cross-entropy to the teacher's top class)")
    distillation_alpha: float = _f(0.5, 'weight of the distillation loss; the base loss gets 1 - alpha '
                                        '(DeiT default 0.5)')
    distillation_tau: float = _f(1.0, 'soft distillation temperature (DeiT default 1.0)')
    # run
    output: str | None = _f(None, 'run folder (default runs/<dataset>-<model>, a new -N suffix if taken)')
    overwrite: bool = _f(False, 'reuse an existing run folder instead of making a new one')
    resume: str | None = _f(None, "resume from a checkpoint ('auto': <output>/last.pth)")
    seed: int = _f(0, 'random seed (0, as every command; the classification recipes of documented runs set 42)')
    deterministic: bool = _f(False, 'deterministic algorithms (bit-identical reruns and resumes)')
    device: str = _f('auto', "'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")
    threads: int | None = _f(None, "CPU threads for torch (default: OMP_NUM_THREADS if set, else the cores left "
                                   "after one per loader process, at least 1; printed at start)")
    checkpoint_every_steps: int = _f(0, 'also save last.pth every N optimizer steps (0: at epoch ends only)')
    eval_every: int = _f(1, 'evaluate every N epochs (and after the last)')
    log_interval: int = _f(50, 'steps between log lines when there is no progress bar')
    log_seconds: float = _f(60.0, 'also a log line when this many seconds passed since the last one, when there is '
                                  'no progress bar (0: off)')
    progress: bool | None = _f(None, 'progress bars (default: when stderr is a terminal)')
    tensorboard: bool = _f(True, 'write TensorBoard logs when tensorboard is installed')
    plot: bool = _f(True, 'write curves.png after every epoch (matplotlib)')
    # recipe bookkeeping (not options)
    recipe: str | None = _f(None, 'the recipe file this configuration came from', cli=False)

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first bad value and the allowed ones."""
        def one_of(name: str, allowed: tuple) -> None:
            v = getattr(self, name)
            if v not in allowed:
                raise UsageError(f'unknown {name.replace("_", " ")} {v!r}; choose one of {", ".join(allowed)}')
        one_of('dataset', DATASETS)
        one_of('sched', SCHEDULES)
        one_of('amp', AMP)
        one_of('lr_scale', ('linear', 'sqrt', 'none'))
        one_of('train_crop', ('rrc', 'pad'))
        one_of('mixup_mode', ('batch', 'pair', 'elem'))
        one_of('distillation', DISTILLATION)
        self._validate_distillation()
        for name in ('batch_size', 'epochs', 'lr_base_size'):
            if getattr(self, name) <= 0:
                raise UsageError(f'{name.replace("_", "-")} must be positive, got {getattr(self, name)}')
        if self.val_batch_size is not None and self.val_batch_size <= 0:
            raise UsageError(f'val-batch-size must be positive, got {self.val_batch_size}')
        if self.lr <= 0:
            raise UsageError(f'lr must be positive, got {self.lr}')
        if not 0 <= self.seed < 2 ** 31:  # numpy takes seeds below 2**32; the rank (and a step count) are added
            raise UsageError(f'seed must be between 0 and 2**31 - 1, got {self.seed}')
        if self.workers < 0:
            raise UsageError(f'workers must be >= 0, got {self.workers}')
        if self.data_in_memory:
            unsupported = [flag for flag, on in (
                ('--train-crop rrc (use --train-crop pad)', self.train_crop != 'pad'),
                (f'--color-jitter {self.color_jitter} (use --color-jitter 0)', bool(self.color_jitter)),
                (f'--aa {self.aa}', self.aa not in (None, '', 'none')),
                (f'--reprob {self.reprob}', bool(self.reprob)),
                (f'--aug-repeats {self.aug_repeats}', self.aug_repeats > 1)) if on]
            if unsupported:
                raise UsageError(f'--data-in-memory augments whole batches with pad-crop, flip and normalisation '
                                 f'only; it cannot apply {", ".join(unsupported)}: change those or drop '
                                 f'--data-in-memory')
        if self.mixup_active and self.mixup_mode == 'batch' and self.batch_size % 2:
            raise UsageError(f'mixup/cutmix need an even batch size per process, got {self.batch_size}')
        return self

    def _validate_distillation(self) -> None:
        if self.distillation == 'none':
            if self.teacher or self.teacher_checkpoint:
                given = '--teacher' if self.teacher else '--teacher-checkpoint'
                raise UsageError(f'{given} is given but --distillation is none; pass --distillation soft or hard '
                                 f'to distil from the teacher, or drop {given}')
            return
        if not self.teacher:
            raise UsageError(f'--distillation {self.distillation} needs a teacher: pass --teacher MODEL and '
                             f'--teacher-checkpoint FILE')
        if not self.teacher_checkpoint:
            raise UsageError(f'--teacher {self.teacher} has no weights: pass --teacher-checkpoint FILE (a teacher '
                             f'with random weights teaches nothing)')
        if not 0 <= self.distillation_alpha <= 1:
            raise UsageError(f'distillation-alpha must be between 0 and 1, got {self.distillation_alpha}')
        if self.distillation_tau <= 0:
            raise UsageError(f'distillation-tau must be positive, got {self.distillation_tau}')

    @property
    def mixup_active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def check_model_name(name: str) -> None:
    """Raise :class:`UsageError` unless ``name`` is a registered mlpvision model (with the closest names)."""
    from ..models import is_model
    from ..models._registry import close_model_names

    if not is_model(name):
        close = close_model_names(name)
        hint = f'; closest: {", ".join(close)}' if close else ''
        raise UsageError(f'unknown model {name!r}{hint} (`mlpvision models --names-only` lists them)')


def check_trainable_name(name: str, role: str = 'model') -> None:
    """Raise :class:`UsageError` unless ``name`` is an mlpvision or a timm model (``mlpvision train`` takes both, for
    the model and for ``--teacher``; ``role`` names which in the message).

    timm's models are there so that a convnet teacher for ``--distillation`` can be trained with the same recipe,
    data and logs as its student (issue 13: "a convnet teacher, trained here first").
    """
    import timm

    from ..models import is_model, list_models

    if is_model(name) or timm.is_model(name.split('.', 1)[0]):  # mlpvision registers its models in timm too
        return
    ours = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    theirs = [n for n in difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6) if n not in ours]
    close = (ours + theirs)[:5]
    hint = f'; closest: {", ".join(close)}' if close else ''
    raise UsageError(f'unknown {role} {name!r}{hint} (any mlpvision or timm model name; `mlpvision models '
                     f'--names-only` and timm.list_models() list them)')


def config_fields() -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) of every option, in declaration order."""
    hints = typing.get_type_hints(TrainConfig)
    return [(f, hints[f.name]) for f in dataclasses.fields(TrainConfig)]


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check and convert one recipe/override value to the field's type."""
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise UsageError(f'{name} cannot be empty')
    base = next((a for a in args if a is not type(None)), tp) if args and type(None) in args else tp
    origin = typing.get_origin(base) or base
    try:
        if origin is bool:
            if isinstance(value, str):
                if value.lower() in ('true', 'yes', '1', 'on'):
                    return True
                if value.lower() in ('false', 'no', '0', 'off'):
                    return False
                raise ValueError
            return bool(value)
        if origin is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if origin is float:
            return float(value)
        if origin is str:
            return str(value)
        if origin is list:
            value = [value] if isinstance(value, (int, float)) else value
            return [float(x) for x in value]
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        raise UsageError(f'{name} must be {getattr(base, "__name__", base)}, got {value!r}') from None
    return value


def _check_keys(keys: typing.Iterable[str], where: str, config: type | None = None) -> None:
    names = [f.name for f in dataclasses.fields(config or TrainConfig)]
    for k in keys:
        if k not in names and k not in RECIPE_META_KEYS:
            close = difflib.get_close_matches(k, names, n=3)
            hint = f' (did you mean {", ".join(close)}?)' if close else ''
            raise UsageError(f'unknown option {k!r} in {where}{hint}')


def recipe_dir() -> Path:
    """``recipes/`` of the source checkout (an editable install, as ``make`` sets up)."""
    return Path(__file__).resolve().parents[3] / 'recipes'


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob('*.yaml'))


def find_recipe(name_or_path: str) -> Path:
    """A recipe file by path, or by name in ``./recipes`` or the checkout's ``recipes/``."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for d in (Path.cwd() / 'recipes', recipe_dir()):
        for cand in (d / name_or_path, d / f'{name_or_path}.yaml'):
            if cand.is_file():
                return cand
    known = list_recipes()
    raise UsageError(f'recipe {name_or_path!r} not found (not a file, and not one of: '
                     f'{", ".join(known) or "none found in " + str(recipe_dir())})')


def _read_recipe(name_or_path: str) -> tuple[Path, dict]:
    path = find_recipe(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f'recipe {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}') from None
    if not isinstance(data, dict):
        raise UsageError(f'recipe {str(path)!r} must be a mapping of option: value')
    return path, data


def recipe_task(name_or_path: str) -> str:
    """The task a recipe trains (its ``task:`` key; classify when it has none)."""
    _, data = _read_recipe(name_or_path)
    task = data.get('task', 'classify')
    if task not in ('classify', 'segment', 'detect'):
        raise UsageError(f'recipe {name_or_path!r}: task {task!r} is not one of classify, segment, detect')
    return task


def load_recipe(name_or_path: str, config: type | None = None) -> dict:
    """The options of a recipe file (metadata keys such as ``description`` and ``source`` dropped), checked against
    the fields of ``config`` (the task's configuration class; classification's :class:`TrainConfig` by default)."""
    path, data = _read_recipe(name_or_path)
    _check_keys(data, f'recipe {str(path)!r}', config)
    opts = {k: v for k, v in data.items() if k not in RECIPE_META_KEYS}
    opts['recipe'] = str(path)
    return opts


def make_config(*layers: dict | None) -> TrainConfig:
    """Defaults updated by each mapping in turn (a recipe, a checkpoint's config, overrides), validated."""
    types = {f.name: tp for f, tp in config_fields()}
    values: dict[str, Any] = {}
    for layer in layers:
        if not layer:
            continue
        _check_keys(layer, 'the configuration')
        for k, v in layer.items():
            if k in RECIPE_META_KEYS:
                continue
            values[k] = _coerce(k.replace('_', '-'), v, types[k])
    return TrainConfig(**values).validate()


def scaled_lrs(cfg: TrainConfig, global_batch: int) -> tuple[float, float, float, str]:
    """(lr, warmup_lr, min_lr) for ``global_batch`` and a sentence stating the rule."""
    ratio = global_batch / cfg.lr_base_size
    factor = {'linear': ratio, 'sqrt': math.sqrt(ratio), 'none': 1.0}[cfg.lr_scale]
    lr = cfg.lr * factor
    wf = factor if cfg.scale_warmup_min_lr else 1.0
    rule = {'linear': f'linear scaling: lr x {global_batch}/{cfg.lr_base_size}',
            'sqrt': f'square-root scaling: lr x sqrt({global_batch}/{cfg.lr_base_size})',
            'none': 'no scaling'}[cfg.lr_scale]
    text = (f'lr {cfg.lr:.3g} at global batch {cfg.lr_base_size} -> {lr:.3g} at global batch {global_batch} '
            f'({rule}; warmup_lr {cfg.warmup_lr * wf:.3g}, min_lr {cfg.min_lr * wf:.3g})')
    return lr, cfg.warmup_lr * wf, cfg.min_lr * wf, text


def env_world_size() -> int:
    return int(os.environ.get('WORLD_SIZE', '1'))
