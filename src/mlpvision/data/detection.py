"""Detection data: COCO-format data sets, PennFudanPed as COCO, COCO evaluation and drawing of detections.

Data. :func:`find_coco_split` finds a split in the COCO 2017 layout (``annotations/instances_{split}.json`` with the
images in ``{split}/``) or the simple one :func:`mlpvision.dense.coco.make_coco_shapes` writes
(``{split}/annotations.json`` and ``{split}/images/``). :class:`CocoDetectionDataset` reads one into torchvision's
detection samples; the COCO format is https://cocodataset.org/#format-data (``bbox`` is ``[x, y, width, height]`` in
pixels; ``segmentation`` is a list of polygons, an uncompressed RLE ``{'size': [h, w], 'counts': [int, ...]}`` or a
compressed one, ``counts`` a string; pycocotools' ``mask`` module decodes all three). Category ids may be sparse
(COCO's run 1..90 for 80 classes): labels are contiguous, ``1..K`` in increasing category-id order with 0 the
background, as :mod:`mlpvision.dense.detection` builds its heads, and ``cat_ids[k - 1]`` is the category of label
``k``. Crowd regions (``iscrowd=1``) are left out of the training targets and stay in :attr:`coco` for the evaluator,
which ignores detections that fall on them (COCO practice; torchvision's ``references/detection/coco_utils.py`` drops
them the same way). Images with no objects stay in the set as negatives, as COCO keeps them (1 021 of train2017's
118 287 have no annotation, cocodataset/cocoapi#76).

The annotations are checked once, when the data set is built, so a bad file fails at once with its file, annotation
id and image named, and not some hours into training. COCO train2017 itself has two annotations with a box of height
0 (ids 918 and 2206849, cocodataset/cocoapi#355): such a box is an error unless ``drop_degenerate=True`` leaves it out
(torchvision's reference and detectron2 drop them silently).

PennFudanPed (https://www.cis.upenn.edu/~jshi/ped_html/, the data of torchvision's "TorchVision Object Detection
Finetuning Tutorial", https://pytorch.org/tutorials/intermediate/torchvision_tutorial.html): 170 images,
``PNGImages/*.png`` and ``PedMasks/*_mask.png`` with one integer id per pedestrian (0 the background).
:func:`pennfudan_to_coco` turns it into a COCO dict (boxes from the masks, as the tutorial; here in COCO's pixel
extent, ``x_max - x_min + 1`` wide as pycocotools' ``toBbox``, where the tutorial's ``[x_min, y_min, x_max, y_max]``
is one pixel narrower), :func:`pennfudan_split` makes a seeded 120 / 50 split (the tutorial's 50 held-out images,
drawn at random here rather than the tutorial's last 50 of a shuffled order).

Evaluation. :func:`coco_evaluate` scores COCO result dicts against a ground-truth dict: AP, AP50, AP75 and AP for
small / medium / large objects (area under 32^2, 32^2 to 96^2, over 96^2 pixels), in percent as detectron2 and mmdet
print them, NaN where a figure has nothing to measure (no ground truth in that size range), and the AP of each
category, derived from COCOeval's precision array as detectron2's ``_derive_coco_results``
(facebookresearch/detectron2@9bd60d333dd8e6e7aefe51e55df076ef02637bc5, ``detectron2/evaluation/coco_evaluation.py``:
the mean of ``precision[:, :, k, area=all, maxDets=100]`` over its entries > -1). Mask AP is computed from results
without their ``bbox``, so that the size ranges use the mask's area and not the box's (pycocotools takes the box area
when a result has a box; the same file, ``_evaluate_predictions_on_coco``, does this).

The evaluator is faster-coco-eval's ``COCOeval_faster`` (the per-image matching and accumulation in C++), with
pycocotools' ``COCOeval`` as the fallback when only pycocotools is installed. Measured with
``benchmarks/coco_eval_speed.py`` (480 x 640 images, ellipses of 5 sparse categories, every object predicted a few
pixels off plus half as many false positives per image; loadRes + evaluate + accumulate + summarize, best of 3 runs
for the small set, one run for the large) on an AMD EPYC host with 2 logical CPUs (``/proc/cpuinfo`` names no model;
shared with other jobs), OMP_NUM_THREADS=1, pycocotools 2.0.11, faster-coco-eval 1.8.0 (whose mask IoUs run on up to
8 threads, here 2):

=============================  ===========  ================  ===========  ================
set                            bbox pycoco  bbox faster       segm pycoco  segm faster
=============================  ===========  ================  ===========  ================
200 images, 2 000 objects      0.34 s       0.04 s (8.5x)     0.38 s       0.24 s (1.6x)
1 000 images, 20 000 objects   4.72 s       0.47 s (10x)      4.09 s       1.89 s (2.2x)
=============================  ===========  ================  ===========  ================

The 12 summary figures of the two were identical (difference 0.0) for both types and both sets; on the smaller sets of
``tests/test_detection_data.py`` some differ in the last bit (3e-16 of 1: the precisions are summed in another order),
and the test checks every figure and per-category AP of the two for equality to 1e-12 relative.
Maintenance (PyPI upload dates): faster-coco-eval 1.8.0 on 2026-08-24, four releases since 1.7.0 (2025-10-22);
pycocotools 2.0.11 on 2025-12-15 (built from ppwwyyxx's fork of cocodataset/cocoapi). pycocotools stays a
dependency of the ``detection`` extra: its ``mask`` module decodes and encodes the masks here, and it is the reference
the test compares against.

Drawing. :func:`draw_detections` draws masks (``torchvision.utils.draw_segmentation_masks``) and boxes with
``"{class} {score:.2f}"`` labels (``draw_bounding_boxes``), one colour per class (PASCAL VOC's colour map,
:func:`mlpvision.data.segmentation.default_palette`); :func:`save_image` writes it as a PNG.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .._checkpoint import atomic_save
from ..errors import UsageError
from .datasets import CorruptImageError, DatasetError
from .segmentation import default_palette

__all__ = ['find_coco_split', 'read_coco', 'write_coco', 'CocoDetectionDataset', 'RandomHorizontalFlip', 'collate',
           'pennfudan_to_coco', 'pennfudan_split', 'coco_evaluate', 'run_cocoeval', 'predictions_from_outputs',
           'draw_detections', 'save_image', 'METRICS', 'BOX_TOLERANCE']

_logger = logging.getLogger(__name__)

METRICS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')  # COCOeval.stats[0:6], the order of its summary table
BOX_TOLERANCE = 1.0  # pixels a box may reach past its image: room for rounding in float boxes, not for a wrong box
PENNFUDAN_PREFIXES = ('FudanPed', 'PennPed')
_FEW = 5  # names listed in an error message before "..."


def _mask_api():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as e:
        raise UsageError('COCO masks need pycocotools: pip install "mlpvision[detection]".') from e
    return mask_utils


def _few(names: Sequence[Any]) -> str:
    return ', '.join(str(n) for n in names[:_FEW]) + (', ...' if len(names) > _FEW else '')


def _listing(folder: Path) -> str:
    """What ``folder`` holds, for an error message: a few names, folders with a trailing slash."""
    if not folder.is_dir():
        return f'{folder} does not exist'
    names = sorted(p.name + ('/' if p.is_dir() else '') for p in folder.iterdir() if not p.name.startswith('.'))
    return f'{folder} has {_few(names)}' if names else f'{folder} is empty'


# ---------------------------------------------------------------------------------------------------------- files


def find_coco_split(data_dir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """The image folder and annotation file of ``split`` under ``data_dir``.

    Two layouts are accepted, tried in this order:

    - COCO 2017 as downloaded: ``data_dir/annotations/instances_{split}.json`` and the images in ``data_dir/{split}/``
      (``split`` is then ``train2017`` or ``val2017``).
    - the simple layout (:func:`mlpvision.dense.coco.make_coco_shapes` with ``root=data_dir/split``):
      ``data_dir/{split}/annotations.json`` and ``data_dir/{split}/images/``.

    Returns:
        ``(image_dir, ann_file)``.

    Raises:
        UsageError: neither layout is there; the message lists both and what ``data_dir`` holds.
    """
    root = Path(data_dir)
    layouts = ((root / split, root / 'annotations' / f'instances_{split}.json'),  # COCO 2017
               (root / split / 'images', root / split / 'annotations.json'))  # simple
    for image_dir, ann_file in layouts:
        if ann_file.is_file() and image_dir.is_dir():
            return image_dir, ann_file
    (coco_dir, coco_ann), (simple_dir, simple_ann) = layouts
    raise UsageError(f'no COCO split {split!r} in {root}: looked for {coco_ann} with images in {coco_dir}/ (COCO 2017 '
                     f'layout) and {simple_ann} with {simple_dir}/ (simple layout), but {_listing(root)}; point the '
                     f'data folder at one of these layouts or pick a split that is there')


def read_coco(path: str | os.PathLike) -> dict:
    """A COCO annotation file as a dict (not yet checked: :class:`CocoDetectionDataset` does that).

    Raises:
        UsageError: the file is missing, is not JSON (the line and column are named) or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f'no COCO annotation file at {path} ({_listing(path.parent)}); give the path of an '
                         f'instances_*.json / annotations.json file')
    try:
        with open(path, 'rb') as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UsageError(f'{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}; fix the file or '
                         f'write it again') from None
    except UnicodeDecodeError as e:
        raise UsageError(f'{path} is not UTF-8 text ({e.reason} at byte {e.start}); give a COCO JSON file') from None
    if not isinstance(data, dict):
        raise UsageError(f'{path} holds a JSON {type(data).__name__}, not the object COCO annotations are; give a '
                         f'COCO JSON file (images, annotations, categories)')
    return data


def write_coco(coco: dict, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a COCO dict as JSON through a temporary file and a rename (a reader never sees half a file).

    Raises:
        UsageError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise UsageError(f'{path} already exists; pass overwrite=True to replace it or choose another path')
    return atomic_save(coco, path, writer=lambda obj, p: Path(p).write_text(json.dumps(obj)))


# ---------------------------------------------------------------------------------------------------- the data set


def _decode_mask(segm: list | dict, h: int, w: int) -> np.ndarray:
    """An annotation's ``segmentation`` (polygons, uncompressed or compressed RLE) as an H x W uint8 mask."""
    mask_utils = _mask_api()
    if isinstance(segm, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        # under 3 points is no area; frPyObjects would also read a 4-number list as a box
        polys = [p for p in segm if len(p) >= 6]
        if not polys:
            return np.zeros((h, w), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(segm['counts'], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segm, h, w)
    else:  # compressed RLE (counts a str after JSON, bytes from pycocotools)
        rle = segm
    with warnings.catch_warnings():
        # pycocotools 2.0.11's decode under numpy 2 (np.array(copy=False) on its own array type); the mask is right
        warnings.filterwarnings('ignore', "__array__ implementation doesn't accept a copy keyword", DeprecationWarning)
        return mask_utils.decode(rle)


def _load_rgb(path: Path) -> Image.Image:
    try:
        with open(path, 'rb') as f:
            img = Image.open(f)
            img.load()  # decode now, so a truncated file fails here, naming it
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f'corrupt image {str(path)!r} ({type(e).__name__}: {e}); replace the file or remove '
                                f'it and its annotations') from None
    return img.convert('RGB')


class CocoDetectionDataset(Dataset):
    """A COCO-format data set as torchvision detection samples, checked when it is built.

    Each item is ``(image, target)``: ``image`` float32 (3, H, W) in [0, 1]; ``target`` with ``boxes`` (N, 4) float32
    xyxy in pixels (clipped to the image), ``labels`` (N,) int64 in ``1..K``, ``masks`` (N, H, W) uint8 when ``masks``
    is True, and ``image_id`` (int64, the COCO image id). Crowd regions are not in the targets.

    Args:
        image_dir: the folder the images' ``file_name`` are relative to.
        ann: a COCO annotation file, or its dict already loaded (then used as it is, not copied).
        transform: ``transform(image, target) -> (image, target)``, e.g. :class:`RandomHorizontalFlip`.
        masks: decode the instance masks (Mask R-CNN); False for box-only detectors, which then need no
            ``segmentation`` in the annotations.
        drop_degenerate: leave out annotations whose box has no width or height instead of refusing the data set
            (COCO train2017 has two).

    Attributes:
        classes: category names in label order (``classes[k - 1]`` is the name of label ``k``).
        cat_ids: COCO category ids in label order (``cat_ids[k - 1]`` is the category of label ``k``).
        coco: the ground-truth dict, for :func:`coco_evaluate` (crowd regions included).
        negatives: the number of images with no object to learn (no annotation, or crowd regions only).
        dropped: the annotations left out by ``drop_degenerate``.

    Raises:
        UsageError: a missing or malformed annotation file or image folder; the message names the file, the
            annotation id or image file name and the fix.
    """

    def __init__(self, image_dir: str | os.PathLike, ann: str | os.PathLike | dict,
                 transform: Callable[[torch.Tensor, dict], tuple[torch.Tensor, dict]] | None = None,
                 masks: bool = True, drop_degenerate: bool = False) -> None:
        self.image_dir = Path(image_dir)
        if isinstance(ann, dict):
            self.ann_file, self.coco, self.source = None, ann, 'the COCO annotation dict'
        else:
            self.ann_file = Path(ann)
            self.coco, self.source = read_coco(self.ann_file), str(self.ann_file)
        self.transform = transform
        self.masks = masks
        self._check_and_index(drop_degenerate)
        _logger.info('%s: %d images (%d without objects), %d objects of %d categories%s', self.source,
                     len(self.images), self.negatives, sum(len(v) for v in self._objects.values()),
                     len(self.cat_ids), f', {self.dropped} degenerate boxes left out' if self.dropped else '')

    def _check_and_index(self, drop_degenerate: bool) -> None:
        src, data = self.source, self.coco
        missing = [k for k in ('images', 'annotations', 'categories') if not isinstance(data.get(k), list)]
        if missing:
            raise UsageError(f'{src} has no {" / ".join(missing)} list (a COCO file needs images, annotations and '
                             f'categories, top-level keys: {_few(list(data))}); give a COCO instances file')
        # categories: labels 1..K in increasing id order
        names: dict[int, str] = {}
        for c in data['categories']:
            if not isinstance(c, dict) or not isinstance(c.get('id'), int) or 'name' not in c:
                raise UsageError(f'{src}: category {c!r} needs an integer id and a name; fix the categories list')
            if c['id'] in names:
                raise UsageError(f'{src}: category id {c["id"]} is declared twice ({names[c["id"]]!r} and '
                                 f'{c["name"]!r}); give each category its own id')
            names[c['id']] = str(c['name'])
        if not names:
            raise UsageError(f'{src} declares no categories; add them to the categories list')
        self.cat_ids = sorted(names)
        self.classes = [names[i] for i in self.cat_ids]
        self._label = {cat: k + 1 for k, cat in enumerate(self.cat_ids)}
        # images: unique ids and file names, sizes, files present
        by_id: dict[int, dict] = {}
        files: dict[str, int] = {}
        for im in data['images']:
            if not isinstance(im, dict) or not all(k in im for k in ('id', 'file_name', 'height', 'width')):
                raise UsageError(f'{src}: image entry {im!r} needs id, file_name, height and width (COCO format); '
                                 f'add the missing fields')
            if not isinstance(im['id'], int):
                raise UsageError(f'{src}: image {im["file_name"]!r} has id {im["id"]!r}, not an integer; COCO image '
                                 f'ids are integers')
            if im['id'] in by_id:
                raise UsageError(f'{src}: image id {im["id"]} is used twice ({by_id[im["id"]]["file_name"]!r} and '
                                 f'{im["file_name"]!r}); give each image its own id')
            if im['file_name'] in files:
                raise UsageError(f'{src}: file name {im["file_name"]!r} is listed twice (image ids '
                                 f'{files[im["file_name"]]} and {im["id"]}); list each image once')
            by_id[im['id']] = im
            files[im['file_name']] = im['id']
        absent = [im['file_name'] for im in data['images'] if not (self.image_dir / im['file_name']).is_file()]
        if absent:
            raise UsageError(f'{len(absent)} of the {len(data["images"])} images {src} lists are not in '
                             f'{self.image_dir} (first: {_few(absent)}); give the folder that holds them')
        # annotations
        objects: dict[int, list[dict]] = {i: [] for i in by_id}
        self.dropped = 0
        for a in data['annotations']:
            if not isinstance(a, dict):
                raise UsageError(f'{src}: annotation {a!r} is not a JSON object; fix the annotations list')
            aid, im = a.get('id'), by_id.get(a.get('image_id'))
            if im is None:
                raise UsageError(f'{src}: annotation {aid} has image_id {a.get("image_id")!r}, which has no entry in '
                                 f'images; add the image or delete the annotation')
            where = f'{src}: annotation {aid} (image {im["file_name"]!r})'
            if a.get('category_id') not in names:
                raise UsageError(f'{where} has category_id {a.get("category_id")!r}, which categories does not '
                                 f'declare (declared: {_few(self.cat_ids)}); declare it or fix the annotation')
            box = a.get('bbox')
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
                raise UsageError(f'{where} has bbox {box!r}, not [x, y, width, height]; fix the annotation')
            x, y, bw, bh = box
            if bw <= 0 or bh <= 0:
                if drop_degenerate:
                    self.dropped += 1
                    continue
                raise UsageError(f'{where} has a box of width {bw} and height {bh} (bbox {box}); fix or delete it, '
                                 f'or pass drop_degenerate=True to leave such boxes out')
            w, h = im['width'], im['height']
            tol = BOX_TOLERANCE
            if x < -tol or y < -tol or x + bw > w + tol or y + bh > h + tol:
                raise UsageError(f'{where} has bbox {box} (x, y, width, height), which reaches outside its {w} x {h} '
                                 f'image by more than {tol:g} pixel; fix the box or the image size')
            if a.get('iscrowd', 0):
                continue
            if min(x + bw, w) - max(x, 0) <= 0 or min(y + bh, h) - max(y, 0) <= 0:
                raise UsageError(f'{where} has bbox {box}, which covers no pixel of its {w} x {h} image; fix or '
                                 f'delete it')
            if self.masks:
                segm = a.get('segmentation')
                if not segm:
                    raise UsageError(f'{where} has no segmentation but masks were asked for; train a box-only '
                                     f'detector (RetinaNet) or pass masks=False')
                if isinstance(segm, dict) and list(segm.get('size', ())) != [h, w]:
                    raise UsageError(f'{where} has an RLE mask of size {segm.get("size")}, but its image is '
                                     f'{h} x {w} (height, width); fix the mask or the image size')
            objects[im['id']].append(a)
        self.images = data['images']
        self._objects = objects
        self.negatives = sum(1 for v in objects.values() if not v)

    def objects_per_category(self) -> list[int]:
        """Objects (crowd regions left out) of each category, in label order (``classes``)."""
        counts = dict.fromkeys(self.cat_ids, 0)
        for anns in self._objects.values():
            for a in anns:
                counts[a['category_id']] += 1
        return [counts[c] for c in self.cat_ids]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info = self.images[idx]
        path = self.image_dir / info['file_name']
        img = _load_rgb(path)
        h, w = info['height'], info['width']
        if img.size != (w, h):
            raise DatasetError(f'image {str(path)!r} is {img.size[0]} x {img.size[1]} but {self.source} says {w} x '
                               f'{h} (width x height); fix its width / height there')
        image = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255)  # H, W, 3 -> 3, H, W
        anns = self._objects[info['id']]
        xywh = torch.tensor([a['bbox'] for a in anns], dtype=torch.float64).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)  # N, 4: xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        target = dict(boxes=boxes.float(),
                      labels=torch.tensor([self._label[a['category_id']] for a in anns], dtype=torch.int64),
                      image_id=torch.tensor(info['id'], dtype=torch.int64))
        if self.masks:
            masks = [_decode_mask(a['segmentation'], h, w) for a in anns]
            target['masks'] = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), np.uint8))
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


class RandomHorizontalFlip:
    """Flip an image (C, H, W) and its detection target (``boxes`` xyxy, ``masks`` (N, H, W)) left-right with
    probability ``p``; the draw comes from torch's RNG, which the loaders seed per worker and epoch."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        if torch.rand(()) >= self.p:
            return image, target
        w = image.shape[-1]
        target = dict(target)
        b = target['boxes']
        target['boxes'] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)  # x0' = W - x1, x1' = W - x0
        if 'masks' in target:
            target['masks'] = target['masks'].flip(-1)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f'{type(self).__name__}(p={self.p})'


def collate(batch: list) -> tuple[list, list]:
    """Lists of images and targets, as torchvision's detection models take them."""
    return tuple(list(x) for x in zip(*batch, strict=True))


# ---------------------------------------------------------------------------------------------------- PennFudanPed


def _pennfudan_dirs(root: str | os.PathLike) -> tuple[Path, Path]:
    root = Path(root)
    img_dir, mask_dir = root / 'PNGImages', root / 'PedMasks'
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise UsageError(f'{root} is not a PennFudanPed folder (it needs PNGImages/ and PedMasks/, but '
                         f'{_listing(root)}); give the PennFudanPed folder unzipped from PennFudanPed.zip')
    return img_dir, mask_dir


def _pennfudan_stems(img_dir: Path) -> list[str]:
    stems = sorted(p.stem for p in img_dir.glob('*.png'))
    if not stems:
        raise UsageError(f'{img_dir} holds no .png image; give the PennFudanPed folder unzipped from '
                         f'PennFudanPed.zip')
    return stems


def pennfudan_to_coco(root: str | os.PathLike, names: Iterable[str] | None = None) -> dict:
    """PennFudanPed (or the images ``names`` of it, file stems such as ``FudanPed00001``) as a COCO dict.

    One category, ``person`` (id 1); image ids 1, 2, ... in the order of ``names`` (sorted stems by default), file
    names relative to ``root/PNGImages``; one annotation per instance id of the image's mask: ``bbox`` the mask's
    pixel extent, ``area`` its pixel count, ``segmentation`` its compressed RLE, ``iscrowd`` 0.

    Raises:
        UsageError: the folder is not PennFudanPed, an image or its mask is missing, a mask is not one id per pixel
            or has another size than its image.
    """
    mask_utils = _mask_api()
    img_dir, mask_dir = _pennfudan_dirs(root)
    stems = _pennfudan_stems(img_dir) if names is None else [Path(n).stem for n in names]
    images, annotations = [], []
    for image_id, stem in enumerate(stems, 1):
        img_path, mask_path = img_dir / f'{stem}.png', mask_dir / f'{stem}_mask.png'
        if not img_path.is_file():
            raise UsageError(f'no image {img_path} ({_listing(img_dir)}); give names that are in PNGImages/')
        if not mask_path.is_file():
            raise UsageError(f'image {img_path} has no mask {mask_path}; restore PedMasks/ from PennFudanPed.zip')
        with Image.open(img_path) as im:  # reads the header only
            w, h = im.size
        try:
            with Image.open(mask_path) as m:
                ids = np.asarray(m)  # mode P / L: the instance id of each pixel
        except (OSError, SyntaxError, ValueError) as e:
            raise CorruptImageError(f'corrupt mask {str(mask_path)!r} ({type(e).__name__}: {e}); restore it from '
                                    f'PennFudanPed.zip') from None
        if ids.ndim != 2:
            raise UsageError(f'mask {mask_path} has {ids.shape[-1]} channels, not one instance id per pixel; '
                             f'restore it from PennFudanPed.zip')
        if ids.shape != (h, w):
            raise UsageError(f'mask {mask_path} is {ids.shape[1]} x {ids.shape[0]} but its image {img_path} is '
                             f'{w} x {h} (width x height); a mask must have its image\'s size')
        images.append(dict(id=image_id, file_name=img_path.name, height=h, width=w))
        for k in np.unique(ids):
            if k == 0:  # background
                continue
            m = ids == k
            ys, xs = np.nonzero(m)
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle['counts'] = rle['counts'].decode('ascii')  # bytes -> str, for JSON
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=1, iscrowd=0, area=float(m.sum()),
                bbox=[float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
                segmentation=rle))
    return dict(info=dict(description=f'PennFudanPed ({len(images)} images) as COCO, by '
                                      f'mlpvision.data.detection.pennfudan_to_coco'),
                images=images, annotations=annotations,
                categories=[dict(id=1, name='person', supercategory='person')])


def pennfudan_split(root: str | os.PathLike, seed: int = 0, n_train: int = 120) -> tuple[list[str], list[str]]:
    """A seeded split of PennFudanPed's image stems: ``n_train`` for training, the rest held out (120 / 50).

    The sorted stems are permuted once with ``numpy.random.default_rng(seed)``; the first ``n_train`` of that order
    train. Both sources of the set (``FudanPed*``, Fudan University; ``PennPed*``, Penn) must appear in each part
    (they do for seed 0: 49 FudanPed + 71 PennPed / 25 + 25; a test checks it on the 170 names of the real set,
    FudanPed00001-00074 and PennPed00001-00096).

    Returns:
        ``(train_stems, held_out_stems)``, each sorted.

    Raises:
        UsageError: ``n_train`` leaves a part empty, or a part lacks one of the two sources (choose another seed).
    """
    img_dir, _ = _pennfudan_dirs(root)
    stems = _pennfudan_stems(img_dir)
    if not 0 < n_train < len(stems):
        raise UsageError(f'n_train={n_train} leaves a part empty ({img_dir} has {len(stems)} images); choose 1 .. '
                         f'{len(stems) - 1}')
    order = np.random.default_rng(seed).permutation(len(stems))
    train = sorted(stems[i] for i in order[:n_train])
    held_out = sorted(stems[i] for i in order[n_train:])
    for part, what in ((train, 'training'), (held_out, 'held-out')):
        for prefix in PENNFUDAN_PREFIXES:
            if not any(s.startswith(prefix) for s in part):
                raise UsageError(f'seed {seed} puts no {prefix}* image of {img_dir} in the {what} part ({len(part)} '
                                 f'images); choose another seed or n_train')
    return train, held_out


# ------------------------------------------------------------------------------------------------------ evaluation


def _backend(name: str | None) -> tuple[str, Any, Any]:
    """``(name, COCO, COCOeval)`` of faster-coco-eval (preferred) or pycocotools."""
    if name not in (None, 'faster_coco_eval', 'pycocotools'):
        raise UsageError(f'unknown COCO evaluator {name!r}; use faster_coco_eval, pycocotools or None (the first '
                         f'of these installed)')
    if name in (None, 'faster_coco_eval'):
        try:
            from faster_coco_eval import COCO, COCOeval_faster
            return 'faster_coco_eval', COCO, COCOeval_faster
        except ImportError as e:
            if name is not None:
                raise UsageError('faster-coco-eval is not installed: pip install "mlpvision[detection]"') from e
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise UsageError('COCO evaluation needs faster-coco-eval or pycocotools: pip install '
                         '"mlpvision[detection]"') from e
    return 'pycocotools', COCO, COCOeval


def _coco_api(COCO: Any, dataset: dict) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        api = COCO()
        api.dataset = dataset
        api.createIndex()
    return api


def _ground_truth(gt: dict) -> dict:
    """The evaluators' copy of ``gt``: annotations copied (COCOeval writes into them), ``iscrowd`` 0 and ``area`` the
    box's where missing, uncompressed RLE compressed (as pycocotools' ``annToRLE`` would, once, here)."""
    mask_utils = None
    anns = []
    for a in gt['annotations']:
        a = dict(a)
        a.setdefault('iscrowd', 0)
        if 'area' not in a:
            a['area'] = float(a['bbox'][2] * a['bbox'][3])
        segm = a.get('segmentation')
        if isinstance(segm, dict) and isinstance(segm.get('counts'), list):
            mask_utils = mask_utils or _mask_api()
            rle = mask_utils.frPyObjects(segm, *segm['size'])
            a['segmentation'] = dict(size=rle['size'], counts=rle['counts'].decode('ascii'))
        anns.append(a)
    return dict(images=gt['images'], annotations=anns, categories=gt['categories'])


def _check_predictions(gt: dict, predictions: list[dict], iou_types: Sequence[str]) -> None:
    image_ids = {im['id'] for im in gt['images']}
    cat_ids = {c['id'] for c in gt['categories']}
    for p in predictions:
        if p['image_id'] not in image_ids:
            raise UsageError(f'a prediction has image_id {p["image_id"]!r}, which the ground truth has no image of; '
                             f'predict on the images of this ground truth')
        if p['category_id'] not in cat_ids:
            raise UsageError(f'a prediction has category_id {p["category_id"]!r}, which the ground truth does not '
                             f'declare ({_few(sorted(cat_ids))}); map labels back with predictions_from_outputs(..., '
                             f'cat_ids=dataset.cat_ids)')
        if 'segm' in iou_types and 'segmentation' not in p:
            raise UsageError("mask AP needs a segmentation in every prediction; pass iou_types=('bbox',) for a "
                             "box-only detector")


def run_cocoeval(gt: dict, predictions: list[dict], iou_types: Sequence[str] = ('bbox', 'segm'),
                 backend: str | None = None) -> tuple[dict[str, Any], str]:
    """The evaluated, accumulated and summarized COCOeval of each IoU type, for figures beyond
    :func:`coco_evaluate`'s (``stats`` as fractions, ``eval['precision']``, ``eval['recall']``).

    Arguments and errors as :func:`coco_evaluate`.

    Returns:
        ``({iou_type: COCOeval}, the summary tables as text)``.
    """
    for t in iou_types:
        if t not in ('bbox', 'segm'):
            raise UsageError(f"unknown IoU type {t!r}; use 'bbox' and / or 'segm'")
    missing = [k for k in ('images', 'annotations', 'categories') if not isinstance(gt.get(k), list)]
    if missing:
        raise UsageError(f'the ground truth has no {" / ".join(missing)} list; give a COCO dict (read_coco(path) '
                         f'or dataset.coco)')
    _check_predictions(gt, predictions, iou_types)
    name, COCO, COCOeval = _backend(backend)
    coco_gt = _coco_api(COCO, _ground_truth(gt))
    evals, report = {}, []
    for iou_type in iou_types:
        # copies: loadRes writes ids, areas (and for segm boxes) into the results
        results = [{k: v for k, v in p.items() if not (iou_type == 'segm' and k == 'bbox')} for p in predictions]
        log = io.StringIO()
        kw = dict(print_function=print) if name == 'faster_coco_eval' else {}  # its default is logging.info
        with contextlib.redirect_stdout(log):
            if results:
                coco_dt = coco_gt.loadRes(results)
            else:  # pycocotools' loadRes refuses an empty list: no detections is every AP 0
                coco_dt = _coco_api(COCO, dict(images=gt['images'], annotations=[], categories=gt['categories']))
            ev = COCOeval(coco_gt, coco_dt, iou_type, **kw)
            ev.evaluate()
            ev.accumulate()
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            ev.summarize()
        _logger.debug('%s', log.getvalue())
        report.append(f'{iou_type} ({name}, {len(results)} detections)\n{table.getvalue()}')
        evals[iou_type] = ev
    return evals, '\n'.join(report)


def _percent(x: float) -> float:
    return float(x) * 100 if x >= 0 else math.nan  # COCOeval's -1: nothing to measure


def coco_evaluate(gt: dict, predictions: list[dict], iou_types: Sequence[str] = ('bbox', 'segm'),
                  classes: Sequence[str] | None = None, backend: str | None = None) -> dict[str, Any]:
    """COCO AP of ``predictions`` against the ground truth ``gt``.

    Args:
        gt: a COCO dict (:func:`read_coco`, ``dataset.coco``); not modified.
        predictions: COCO result dicts, ``image_id``, ``category_id`` (the ground truth's category ids), ``bbox``
            ``[x, y, w, h]``, ``score`` and for ``'segm'`` a ``segmentation`` RLE (``counts`` an ASCII string), as
            :func:`predictions_from_outputs` makes them; not modified.
        iou_types: ``'bbox'`` and / or ``'segm'``.
        classes: names for ``per_category``, in increasing category-id order (the data set's ``classes``); the
            ground truth's category names when None.
        backend: ``'faster_coco_eval'``, ``'pycocotools'``, or None for the first of these installed (they give
            the same figures; the module docstring has the timings).

    Returns:
        ``{iou_type}_{metric}`` for each IoU type and metric of :data:`METRICS` (``bbox_AP``, ``bbox_AP50``, ...,
        ``segm_APl``) in percent, NaN where there is nothing to measure (no ground-truth object of that size);
        ``per_category``: ``{iou_type: {class name: AP in percent or NaN}}``; ``report``: the evaluator's summary
        tables as text (also logged at DEBUG level). No predictions at all scores 0 wherever there is ground truth.

    Raises:
        UsageError: a prediction names an image or category the ground truth does not have, a ``'segm'`` evaluation
            has a prediction without a mask, or no evaluator is installed.
    """
    evals, report = run_cocoeval(gt, predictions, iou_types, backend)
    cat_ids = sorted(c['id'] for c in gt['categories'])
    if classes is None:
        by_id = {c['id']: str(c.get('name', c['id'])) for c in gt['categories']}
        classes = [by_id[i] for i in cat_ids]
    elif len(classes) != len(cat_ids):
        raise UsageError(f'{len(classes)} class names for the {len(cat_ids)} categories of the ground truth; pass '
                         f'the data set\'s classes (or None for the ground truth\'s names)')
    out: dict[str, Any] = {}
    per_category: dict[str, dict[str, float]] = {}
    for iou_type, ev in evals.items():
        for i, metric in enumerate(METRICS):
            out[f'{iou_type}_{metric}'] = _percent(ev.stats[i])
        # precision: [T iou thresholds, R recall points, K categories, A area ranges, M max detections]; as
        # detectron2's _derive_coco_results: area 'all', the last maxDets (100), entries > -1
        precision = np.asarray(ev.eval['precision'])
        assert list(ev.params.catIds) == cat_ids  # K is in increasing category-id order
        per = {}
        for k, name in enumerate(classes):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            per[name] = float(p.mean()) * 100 if p.size else math.nan
        per_category[iou_type] = per
    out['per_category'] = per_category
    out['report'] = report
    _logger.debug('%s', report)
    return out


def predictions_from_outputs(outputs: Sequence[dict[str, torch.Tensor]], image_ids: Sequence[int | torch.Tensor],
                             cat_ids: Sequence[int], mask_threshold: float = 0.5) -> list[dict]:
    """torchvision detector outputs as COCO result dicts, with the data set's category ids.

    Args:
        outputs: one dict per image: ``boxes`` (N, 4) xyxy, ``labels`` (N,) in ``1..K``, ``scores`` (N,) (1 when
            absent, so targets can stand in for predictions), and optionally ``masks`` (N, 1, H, W) probabilities
            (or (N, H, W); a uint8 0/1 mask works too).
        image_ids: the COCO image id of each output (``target['image_id']``).
        cat_ids: the category id of each label (``dataset.cat_ids``: label ``k`` is ``cat_ids[k - 1]``).
        mask_threshold: a pixel belongs to the mask when its probability is above this (torchvision's reference
            ``coco_eval.py`` uses 0.5).

    Returns:
        dicts with ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``, ``score`` and, with masks,
        ``segmentation`` (compressed RLE, ``counts`` an ASCII string).

    Raises:
        UsageError: ``outputs`` and ``image_ids`` differ in length, or a label is outside ``1..len(cat_ids)``.
    """
    if len(outputs) != len(image_ids):
        raise UsageError(f'{len(outputs)} outputs but {len(image_ids)} image ids; give one image id per output')
    results: list[dict] = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out['boxes'].detach().cpu().double()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()  # N, 4: x, y, w, h
        labels = out['labels'].cpu().tolist()
        scores = out['scores'].detach().cpu().tolist() if 'scores' in out else [1.0] * len(labels)
        bad = [lab for lab in labels if not 1 <= lab <= len(cat_ids)]
        if bad:
            raise UsageError(f'label {bad[0]} is outside 1..{len(cat_ids)}: outputs must hold the data set\'s '
                             f'contiguous labels (0 is the background), and cat_ids one category per label')
        image_id = int(image_id)
        base = [dict(image_id=image_id, category_id=int(cat_ids[lab - 1]), bbox=b, score=float(s))
                for lab, b, s in zip(labels, xywh, scores, strict=True)]
        if 'masks' in out and base:
            masks = out['masks'].detach().cpu()
            masks = masks[:, 0] if masks.dim() == 4 else masks  # N, 1, H, W -> N, H, W
            binary = (masks > mask_threshold).permute(1, 2, 0).numpy().astype(np.uint8)  # H, W, N, as encode takes
            for r, rle in zip(base, _mask_api().encode(np.asfortranarray(binary)), strict=True):
                r['segmentation'] = dict(size=rle['size'], counts=rle['counts'].decode('ascii'))
        results += base
    return results


# --------------------------------------------------------------------------------------------------------- drawing


def draw_detections(image: torch.Tensor, output: dict[str, torch.Tensor], classes: Sequence[str],
                    score_thresh: float = 0.5, alpha: float = 0.5, mask_threshold: float = 0.5) -> torch.Tensor:
    """``image`` (3, H, W) uint8 with the detections of ``output`` scoring at least ``score_thresh`` drawn on it.

    Masks (``output['masks']`` (N, 1, H, W) probabilities above ``mask_threshold``, or (N, H, W)) are blended in at
    ``alpha``, then boxes are drawn with ``"{class} {score:.2f}"`` labels (the class name alone when ``output`` has
    no scores, e.g. a target). Each class has its own colour (``classes[k - 1]`` names label ``k``).

    Returns:
        a new (3, H, W) uint8 tensor (on the CPU).
    """
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise UsageError(f'draw_detections takes a (3, H, W) uint8 image, got {tuple(image.shape)} '
                         f'{image.dtype}; convert with (image * 255).round().to(torch.uint8)')
    canvas = image.detach().cpu()
    labels = output['labels'].detach().cpu()
    scores = output['scores'].detach().cpu() if 'scores' in output else None
    keep = scores >= score_thresh if scores is not None else torch.ones(len(labels), dtype=torch.bool)
    if not keep.any():
        return canvas.clone()
    palette = default_palette(max(len(classes), 1))
    kept = labels[keep].tolist()
    colours = [palette[(lab - 1) % len(palette)] for lab in kept]
    if 'masks' in output:
        masks = output['masks'].detach().cpu()[keep]
        masks = masks[:, 0] if masks.dim() == 4 else masks  # N, 1, H, W -> N, H, W
        canvas = draw_segmentation_masks(canvas, masks > mask_threshold, alpha=alpha, colors=colours)
    names = [classes[lab - 1] if 1 <= lab <= len(classes) else str(lab) for lab in kept]
    text = names if scores is None else [f'{n} {s:.2f}' for n, s in zip(names, scores[keep].tolist(), strict=True)]
    return draw_bounding_boxes(canvas, output['boxes'].detach().cpu()[keep], labels=text, colors=colours, width=2)


def save_image(image: torch.Tensor, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a (3, H, W) or (1, H, W) uint8 tensor as a PNG, through a temporary file and a rename.

    Raises:
        UsageError: ``path`` does not end in ``.png``, the tensor is not uint8 CHW, or ``path`` exists and
            ``overwrite`` is False.
    """
    path = Path(path)
    if path.suffix.lower() != '.png':
        raise UsageError(f'save_image writes PNG files; give a path ending in .png, not {path.name!r}')
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise UsageError(f'save_image takes a (3, H, W) or (1, H, W) uint8 tensor, got {tuple(image.shape)} '
                         f'{image.dtype}')
    if path.exists() and not overwrite:
        raise UsageError(f'{path} already exists; pass overwrite=True to replace it or choose another path')
    array = image.detach().cpu().permute(1, 2, 0).numpy()  # C, H, W -> H, W, C
    array = array[..., 0] if array.shape[-1] == 1 else array
    return atomic_save(array, path, writer=lambda a, p: Image.fromarray(a).save(p, format='PNG'))
