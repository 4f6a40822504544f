"""Train and eval transforms from timm's ``create_transform`` (RandomResizedCrop, flip, colour jitter, RandAugment,
random erasing; eval resize + centre crop by ``crop_pct``), with the preprocessing a model expects resolved from its
pretrained cfg and overridden where the run says so."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch.nn as nn
from PIL import Image
from timm.data import create_transform
from torchvision import transforms as T

from ..errors import UsageError

__all__ = ['DataConfig', 'resolve_data_config', 'build_transform', 'ToMode']


@dataclass(frozen=True)
class DataConfig:
    """What the model's input looks like: ``input_size`` is (C, H, W)."""
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    @property
    def img_size(self) -> tuple[int, int]:
        return self.input_size[1], self.input_size[2]

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        return cls(tuple(int(v) for v in d['input_size']), tuple(float(v) for v in d['mean']),
                   tuple(float(v) for v in d['std']), str(d['interpolation']), float(d['crop_pct']))


def _fit_channels(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if in_chans == 1:  # e.g. ImageNet statistics for a grayscale model: their mean
        return (sum(values) / len(values),)
    if len(values) == 1:
        return values * in_chans
    raise UsageError(f'mean/std have {len(values)} values but the model takes {in_chans} channels; give {in_chans}.')


def resolve_data_config(
        model: nn.Module | None = None,
        img_size: int | Sequence[int] | None = None,
        in_chans: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str | None = None,
        crop_pct: float | None = None,
) -> DataConfig:
    """The model's pretrained-cfg preprocessing (timm's ``input_size``, ``mean``, ``std``, ``interpolation``,
    ``crop_pct``), with any argument given here taking precedence."""
    pcfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    c, h, w = pcfg.get('input_size', (3, 224, 224))
    if img_size is None:
        img_size = getattr(model, 'img_size', None) or (h, w)  # a model built for another size knows it
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    in_chans = in_chans or getattr(model, 'in_chans', None) or c
    return DataConfig(
        input_size=(int(in_chans), int(img_size[0]), int(img_size[1])),
        mean=_fit_channels(mean or pcfg.get('mean', (0.485, 0.456, 0.406)), in_chans),
        std=_fit_channels(std or pcfg.get('std', (0.229, 0.224, 0.225)), in_chans),
        interpolation=interpolation or pcfg.get('interpolation', 'bicubic'),
        crop_pct=float(crop_pct or pcfg.get('crop_pct', 0.875)),
    )


def _posterize_zero_bits_fix() -> None:
    """Let timm's RandAugment posterize to 0 bits again.

    timm maps some magnitudes to ``posterize(bits=0)`` (PosterizeIncreasing at the maximum level, which
    ``rand-m9-mstd0.5-inc1`` reaches now and then; Posterize at low levels). Pillow used to return a black image for
    0 bits; recent Pillow raises ValueError instead, which stops training part-way through an epoch. Where Pillow
    raises, timm's op table gets a posterize that returns the black image, as before.
    """
    from PIL import ImageOps
    from timm.data import auto_augment

    try:
        ImageOps.posterize(Image.new('L', (1, 1)), 0)
        return
    except ValueError:
        pass
    original = auto_augment.posterize

    def posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
        if bits_to_keep <= 0:
            return Image.new(img.mode, img.size)  # keeping no bits zeroes every pixel
        return original(img, bits_to_keep, **kwargs)

    for name, fn in list(auto_augment.NAME_TO_OP.items()):
        if fn is original:
            auto_augment.NAME_TO_OP[name] = posterize


class ToMode:
    """Convert a PIL image to 'L' (one channel) or 'RGB' (three), whatever it was stored as."""

    def __init__(self, in_chans: int) -> None:
        if in_chans not in (1, 3):
            raise UsageError(f'images can be fed as 1 or 3 channels, not {in_chans}.')
        self.mode = 'L' if in_chans == 1 else 'RGB'

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.mode!r})'


def build_transform(
        data_cfg: DataConfig,
        is_training: bool,
        scale: Sequence[float] | None = None,
        ratio: Sequence[float] | None = None,
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        auto_augment: str | None = None,
        re_prob: float = 0.,
        re_mode: str = 'pixel',
        re_count: int = 1,
        train_crop: str = 'rrc',
        crop_padding: int = 4,
) -> Callable:
    """timm's ``create_transform`` for ``data_cfg``, preceded by the conversion to the model's channel count.

    Args:
        scale / ratio: RandomResizedCrop's area and aspect ranges (timm's defaults (0.08, 1) and (3/4, 4/3)).
        auto_augment: a timm policy string, e.g. 'rand-m9-mstd0.5-inc1' (RandAugment); None or 'none' for none.
        re_prob / re_mode / re_count: random erasing.
        train_crop: 'rrc' (RandomResizedCrop) or 'pad' (resize, then a random crop after ``crop_padding`` pixels
            of zero padding: the CIFAR recipe of the Swin-based codebases at 32 px).
    """
    if train_crop not in ('rrc', 'pad'):
        raise UsageError(f"train_crop must be 'rrc' or 'pad', got {train_crop!r}.")
    aa = None if auto_augment in (None, '', 'none') else auto_augment
    if aa is not None:
        _posterize_zero_bits_fix()
    tf = create_transform(
        input_size=data_cfg.input_size,
        is_training=is_training,
        scale=tuple(scale) if scale else None,
        ratio=tuple(ratio) if ratio else None,
        hflip=hflip,
        color_jitter=color_jitter if color_jitter else None,
        auto_augment=aa,
        interpolation=data_cfg.interpolation,
        mean=data_cfg.mean,
        std=data_cfg.std,
        re_prob=re_prob,
        re_mode=re_mode,
        re_count=re_count,
        crop_pct=data_cfg.crop_pct,
    )
    if is_training and train_crop == 'pad':
        size = data_cfg.img_size
        interp = T.InterpolationMode(data_cfg.interpolation if data_cfg.interpolation != 'random' else 'bilinear')
        tf.transforms[0] = T.Compose([T.Resize(size, interpolation=interp), T.RandomCrop(size, padding=crop_padding)])
    return T.Compose([ToMode(data_cfg.in_chans), tf])
