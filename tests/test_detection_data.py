"""mlpvision.data.detection: COCO layouts and checks, sparse category ids, mask formats, the flip, PennFudanPed as COCO
(a generated stand-in of the real folder), COCO evaluation (oracle, empty, both evaluators agree) and drawing."""
import copy

import numpy as np
import pytest
import torch
from PIL import Image

from mlpvision.data.datasets import CorruptImageError
from mlpvision.data.detection import (
    METRICS,
    CocoDetectionDataset,
    RandomHorizontalFlip,
    coco_evaluate,
    draw_detections,
    find_coco_split,
    pennfudan_split,
    pennfudan_to_coco,
    predictions_from_outputs,
    read_coco,
    save_image,
    write_coco,
)
from mlpvision.dense.coco import make_coco_shapes
from mlpvision.errors import UsageError

mask_utils = pytest.importorskip('pycocotools.mask')

H, W = 48, 64
CATS = [dict(id=17, name='dog'), dict(id=3, name='cat'), dict(id=90, name='toaster')]  # sparse, out of order


def _rect(x0: int, y0: int, x1: int, y1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _compressed(m: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m))
    return dict(size=rle['size'], counts=rle['counts'].decode('ascii'))


def _uncompressed(m: np.ndarray) -> dict:
    flat = m.T.reshape(-1)  # column-major, starting with a run of zeros
    runs, value, n = [], 0, 0
    for v in flat:
        if v != value:
            runs.append(n)
            value, n = v, 0
        n += 1
    return dict(size=list(m.shape), counts=[*runs, n])


def _write_png(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def coco(tmp_path):
    """3 images of 48 x 64 in tmp_path/images: a.png with a dog (polygon), a cat (uncompressed RLE), a toaster
    (compressed RLE) of the same rectangle, and a crowd region; b.png with one dog; c.png with nothing."""
    rng = np.random.default_rng(0)
    for name in ('a.png', 'b.png', 'c.png'):
        _write_png(tmp_path / 'images' / name, rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    m = _rect(5, 3, 15, 11)
    anns = [
        dict(id=1, image_id=1, category_id=17, iscrowd=0, bbox=[5, 3, 10, 8], area=80,
             segmentation=[[5, 3, 15, 3, 15, 11, 5, 11]]),
        dict(id=2, image_id=1, category_id=3, iscrowd=0, bbox=[5, 3, 10, 8], area=80, segmentation=_uncompressed(m)),
        dict(id=3, image_id=1, category_id=90, iscrowd=0, bbox=[5, 3, 10, 8], area=80, segmentation=_compressed(m)),
        dict(id=4, image_id=1, category_id=3, iscrowd=1, bbox=[30, 20, 20, 20], area=400,
             segmentation=_uncompressed(_rect(30, 20, 50, 40))),
        dict(id=5, image_id=2, category_id=17, iscrowd=0, bbox=[40, 10, 20, 30], area=600,
             segmentation=_compressed(_rect(40, 10, 60, 40))),
    ]
    images = [dict(id=i + 1, file_name=n, height=H, width=W) for i, n in enumerate(('a.png', 'b.png', 'c.png'))]
    return dict(images=images, annotations=anns, categories=copy.deepcopy(CATS))


def _dataset(tmp_path, data: dict, **kw) -> CocoDetectionDataset:
    write_coco(data, tmp_path / 'ann.json', overwrite=True)
    return CocoDetectionDataset(tmp_path / 'images', tmp_path / 'ann.json', **kw)


def test_both_layouts_are_found_and_anything_else_is_named(tmp_path):
    root = tmp_path / 'coco'
    (root / 'annotations').mkdir(parents=True)
    (root / 'val2017').mkdir()
    (root / 'annotations' / 'instances_val2017.json').write_text('{}')
    assert find_coco_split(root, 'val2017') == (root / 'val2017', root / 'annotations' / 'instances_val2017.json')
    make_coco_shapes(tmp_path / 'shapes' / 'train', num_images=1, size=(32, 40))
    assert find_coco_split(tmp_path / 'shapes', 'train') == (tmp_path / 'shapes' / 'train' / 'images',
                                                            tmp_path / 'shapes' / 'train' / 'annotations.json')
    with pytest.raises(UsageError) as e:
        find_coco_split(root, 'train2017')
    msg = str(e.value)
    assert 'instances_train2017.json' in msg and 'train2017/annotations.json' in msg and 'val2017/' in msg
    assert '\n' not in msg


def test_sparse_category_ids_become_contiguous_labels_and_map_back(tmp_path, coco):
    ds = _dataset(tmp_path, coco)
    assert ds.cat_ids == [3, 17, 90] and ds.classes == ['cat', 'dog', 'toaster']
    assert len(ds) == 3 and ds.negatives == 1 and ds.coco == coco
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W) and 0 <= image.min() and image.max() <= 1
    assert target['labels'].tolist() == [2, 1, 3]  # dog, cat, toaster; the crowd region left out
    assert target['labels'].dtype == torch.int64 and target['image_id'].dtype == torch.int64
    assert target['boxes'].dtype == torch.float32 and target['boxes'].tolist() == [[5, 3, 15, 11]] * 3
    assert target['masks'].dtype == torch.uint8 and target['masks'].shape == (3, H, W)
    assert ds[2][1]['boxes'].shape == (0, 4) and ds[2][1]['masks'].shape == (0, H, W)
    targets = [ds[i][1] for i in range(3)]
    preds = predictions_from_outputs(targets, [t['image_id'] for t in targets], ds.cat_ids)
    crowdless = [a for a in coco['annotations'] if not a['iscrowd']]
    assert [(p['image_id'], p['category_id'], p['bbox']) for p in preds] == [
        (a['image_id'], a['category_id'], [float(v) for v in a['bbox']]) for a in crowdless]
    for p, a in zip(preds, crowdless, strict=True):
        assert p['score'] == 1.0 and isinstance(p['segmentation']['counts'], str)
        assert p['segmentation']['counts'] == _compressed(_rect(*a['bbox'][:2], a['bbox'][0] + a['bbox'][2],
                                                                a['bbox'][1] + a['bbox'][3]))['counts']
    metrics = coco_evaluate(ds.coco, preds, classes=ds.classes)  # the crowd region matches nothing and costs nothing
    assert all(metrics[f'{t}_{m}'] == 100 for t in ('bbox', 'segm') for m in ('AP', 'AP50', 'AP75', 'APs'))
    assert metrics['per_category'] == {t: {'cat': 100.0, 'dog': 100.0, 'toaster': 100.0} for t in ('bbox', 'segm')}
    with pytest.raises(UsageError, match=r'label 0 is outside 1\.\.3'):
        predictions_from_outputs([dict(boxes=torch.zeros(1, 4), labels=torch.tensor([0]), scores=torch.ones(1))],
                                 [1], ds.cat_ids)
    with pytest.raises(UsageError, match='predictions_from_outputs'):  # contiguous labels passed as category ids
        coco_evaluate(ds.coco, [dict(p, category_id=2) for p in preds])


def test_polygon_and_both_rle_forms_decode_to_the_same_mask(tmp_path, coco):
    masks = _dataset(tmp_path, coco)[0][1]['masks']
    expected = torch.from_numpy(_rect(5, 3, 15, 11))
    for m in masks:
        assert torch.equal(m, expected)


def test_flip_keeps_boxes_and_masks_aligned(tmp_path, coco):
    image, target = _dataset(tmp_path, coco)[1]
    flipped, t = RandomHorizontalFlip(p=1.0)(image, target)
    assert torch.equal(flipped, image.flip(-1)) and torch.equal(t['masks'], target['masks'].flip(-1))
    assert t['boxes'].tolist() == [[W - 60, 10, W - 40, 40]]
    ys, xs = torch.nonzero(t['masks'][0], as_tuple=True)  # each box is still its mask's extent
    assert t['boxes'][0].tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert target['boxes'].tolist() == [[40, 10, 60, 40]]  # the input target is not changed
    same, t0 = RandomHorizontalFlip(p=0.0)(image, target)
    assert same is image and t0 is target
    ds = _dataset(tmp_path, coco, transform=RandomHorizontalFlip(p=1.0))
    assert ds[1][1]['boxes'].tolist() == [[W - 60, 10, W - 40, 40]]


def _break(name: str, data: dict, tmp_path) -> tuple[dict, str]:
    """``data`` broken one way, and what the error must say."""
    a = data['annotations']
    if name == 'missing key':
        del data['categories']
        return data, 'no categories list'
    if name == 'box outside':
        a[0]['bbox'] = [50, 3, 16, 8]  # reaches x = 66 in a 64-wide image
        return data, r'annotation 1 \(image .a\.png.\).*outside its 64 x 48 image'
    if name == 'zero width':
        a[4]['bbox'] = [40, 10, 0, 30]
        return data, r'annotation 5 \(image .b\.png.\).*width 0.*drop_degenerate=True'
    if name == 'unknown category':
        a[1]['category_id'] = 4
        return data, r'annotation 2 .*category_id 4.*declared: 3, 17, 90'
    if name == 'no image entry':
        a[4]['image_id'] = 9
        return data, r'annotation 5 has image_id 9.*no entry in images'
    if name == 'missing image file':
        (tmp_path / 'images' / 'b.png').unlink()
        return data, r'1 of the 3 images .* are not in .*images \(first: b\.png\)'
    if name == 'duplicate image id':
        data['images'][2]['id'] = 1
        return data, r'image id 1 is used twice'
    if name == 'duplicate file name':
        data['images'][2]['file_name'] = 'a.png'
        return data, r"file name 'a\.png' is listed twice"
    if name == 'no segmentation':
        del a[4]['segmentation']
        return data, r'annotation 5 .*no segmentation.*RetinaNet.*masks=False'
    raise AssertionError(name)


@pytest.mark.parametrize('name', ['missing key', 'box outside', 'zero width', 'unknown category', 'no image entry',
                                  'missing image file', 'duplicate image id', 'duplicate file name',
                                  'no segmentation'])
def test_bad_annotations_are_refused_with_the_file_named(name, tmp_path, coco):
    data, pattern = _break(name, coco, tmp_path)
    write_coco(data, tmp_path / 'ann.json')
    with pytest.raises(UsageError, match=pattern) as e:
        CocoDetectionDataset(tmp_path / 'images', tmp_path / 'ann.json')
    assert 'ann.json' in str(e.value) and '\n' not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ann.json', 'images']  # nothing written


def test_the_fixes_the_messages_name_work(tmp_path, coco):
    data, _ = _break('zero width', copy.deepcopy(coco), tmp_path)
    ds = _dataset(tmp_path, data, drop_degenerate=True)
    assert ds.dropped == 1 and ds.negatives == 2 and len(ds[1][1]['labels']) == 0
    data, _ = _break('no segmentation', copy.deepcopy(coco), tmp_path)
    ds = _dataset(tmp_path, data, masks=False)
    assert 'masks' not in ds[1][1] and ds[1][1]['labels'].tolist() == [2]


def test_unreadable_files_are_named(tmp_path, coco):
    with pytest.raises(UsageError, match=r'no COCO annotation file at .*nothing\.json') as e:
        CocoDetectionDataset(tmp_path / 'images', tmp_path / 'nothing.json')
    assert '\n' not in str(e.value)
    (tmp_path / 'bad.json').write_text('{"images": [],\n "annotations": [\n  {"id": 1,}\n]}')
    with pytest.raises(UsageError, match=r'bad\.json is not valid JSON: .* line 3, column 12'):
        read_coco(tmp_path / 'bad.json')
    (tmp_path / 'images' / 'b.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    ds = _dataset(tmp_path, coco)
    with pytest.raises(CorruptImageError, match=r'b\.png'):
        ds[1]


# ---------------------------------------------------------------------------------------------------- evaluation


def _sized_gt() -> dict:
    """Two images of 200 x 200 with a small (16 x 16), a medium (50 x 40) and a large (120 x 110) object of two
    sparse categories, and a crowd region."""
    anns = []
    for image_id, objects in ((1, [(5, 5, 21, 21, 7), (30, 40, 80, 80, 7), (70, 80, 190, 190, 42)]),
                              (2, [(100, 10, 116, 26, 42), (10, 100, 130, 210 - 10, 7)])):
        for x0, y0, x1, y1, cat in objects:
            m = _rect(x0, y0, x1, y1, 200, 200)
            anns.append(dict(id=len(anns) + 1, image_id=image_id, category_id=cat, iscrowd=0,
                             bbox=[x0, y0, x1 - x0, y1 - y0], area=float(m.sum()), segmentation=_compressed(m)))
    anns.append(dict(id=len(anns) + 1, image_id=2, category_id=7, iscrowd=1, bbox=[150, 150, 40, 40], area=1600.,
                     segmentation=_uncompressed(_rect(150, 150, 190, 190, 200, 200))))
    return dict(images=[dict(id=i, file_name=f'{i}.png', height=200, width=200) for i in (1, 2)], annotations=anns,
                categories=[dict(id=42, name='b'), dict(id=7, name='a')])


def _oracle(gt: dict) -> list[dict]:
    return [dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'], score=1.0,
                 segmentation=a['segmentation']) for a in gt['annotations'] if not a['iscrowd']]


def _backends() -> list[str]:
    out = []
    for name in ('faster_coco_eval', 'pycocotools'):
        try:
            __import__(name)
            out.append(name)
        except ImportError:
            pass
    return out


@pytest.mark.parametrize('backend', _backends())
def test_an_oracle_scores_100_and_nothing_scores_0(backend, capsys):
    gt = _sized_gt()
    before = copy.deepcopy(gt)
    m = coco_evaluate(gt, _oracle(gt), backend=backend)
    assert {k: m[k] for k in m if k not in ('per_category', 'report')} == pytest.approx({
        f'{t}_{k}': 100.0 for t in ('bbox', 'segm') for k in METRICS}, abs=1e-12)  # 1.0 - 3e-16 from pycocotools
    assert m['per_category'] == {t: pytest.approx({'a': 100.0, 'b': 100.0}, abs=1e-12) for t in ('bbox', 'segm')}
    assert 'Average Precision' in m['report'] and 'bbox' in m['report'] and 'segm' in m['report']
    assert gt == before  # the ground truth is not modified
    assert capsys.readouterr().out == ''  # the tables are in the report only
    nothing = coco_evaluate(gt, [], backend=backend)
    assert all(nothing[f'{t}_{k}'] == 0 for t in ('bbox', 'segm') for k in METRICS)
    assert nothing['per_category'] == {t: {'a': 0.0, 'b': 0.0} for t in ('bbox', 'segm')}
    box_only = coco_evaluate(gt, [{k: v for k, v in p.items() if k != 'segmentation'} for p in _oracle(gt)],
                             iou_types=('bbox',), backend=backend)
    assert box_only['bbox_AP'] == 100 and 'segm_AP' not in box_only
    with pytest.raises(UsageError, match=r"iou_types=\('bbox',\)"):
        coco_evaluate(gt, [{k: v for k, v in p.items() if k != 'segmentation'} for p in _oracle(gt)])


def _noisy(gt: dict, seed: int = 0) -> list[dict]:
    """The oracle's boxes and masks shifted a few pixels with random scores, plus false positives."""
    rng = np.random.default_rng(seed)
    out = []
    for p in _oracle(gt) * 2:
        x, y, w, h = p['bbox']
        dx, dy = (int(v) for v in rng.integers(-6, 7, 2))
        x0, y0 = max(x + dx, 0), max(y + dy, 0)
        x1, y1 = min(x + w + dx, 200), min(y + h + dy, 200)
        cat = p['category_id'] if rng.random() < 0.8 else 49 - p['category_id']  # 7 <-> 42
        out.append(dict(image_id=p['image_id'], category_id=cat, bbox=[x0, y0, x1 - x0, y1 - y0],
                        score=float(rng.random()), segmentation=_compressed(_rect(x0, y0, x1, y1, 200, 200))))
    return out


def test_faster_coco_eval_gives_pycocotools_figures():
    """Equal to 1e-12 (the two sum the precisions in another order: 1 ulp apart here)."""
    pytest.importorskip('faster_coco_eval')
    gt = _sized_gt()
    preds = _noisy(gt)
    a, b = (coco_evaluate(gt, preds, backend=name) for name in ('pycocotools', 'faster_coco_eval'))
    assert 0 < a['bbox_AP'] < 100 and 0 < a['segm_AP'] < 100
    for k in a:
        if k == 'per_category':
            assert a[k] == {t: pytest.approx(b[k][t], rel=1e-12, abs=0, nan_ok=True) for t in b[k]}
        elif k != 'report':
            assert a[k] == pytest.approx(b[k], rel=1e-12, abs=0, nan_ok=True), k


# ----------------------------------------------------------------------------------------------------- PennFudan


def _fake_pennfudan(root) -> dict[str, list[tuple[int, int, int, int]]]:
    """PNGImages/ and PedMasks/ with 3 images of 40 x 50: instance ids 1, 2, ... on a 0 background (mode L)."""
    objects = {'FudanPed00001': [(2, 3, 12, 30), (20, 5, 31, 36)], 'FudanPed00002': [(10, 10, 45, 38)],
               'PennPed00001': [(0, 0, 8, 40), (30, 2, 50, 20), (12, 25, 22, 33)]}
    rng = np.random.default_rng(0)
    for stem, boxes in objects.items():
        _write_png(root / 'PNGImages' / f'{stem}.png', rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
        ids = np.zeros((40, 50), np.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes, 1):
            ids[y0:y1, x0:x1] = k
        _write_png(root / 'PedMasks' / f'{stem}_mask.png', ids)
    return objects


def test_pennfudan_as_coco(tmp_path):
    objects = _fake_pennfudan(tmp_path)
    coco = pennfudan_to_coco(tmp_path)
    assert coco['categories'] == [dict(id=1, name='person', supercategory='person')]
    assert [im['file_name'] for im in coco['images']] == [f'{s}.png' for s in sorted(objects)]
    assert all((im['height'], im['width']) == (40, 50) for im in coco['images'])
    expected = [(i + 1, [x0, y0, x1 - x0, y1 - y0], (x1 - x0) * (y1 - y0))
                for i, stem in enumerate(sorted(objects)) for x0, y0, x1, y1 in objects[stem]]
    assert [(a['image_id'], a['bbox'], a['area']) for a in coco['annotations']] == expected
    for a in coco['annotations']:
        assert mask_utils.toBbox(a['segmentation']).tolist() == a['bbox']  # COCO's own box of the mask
    write_coco(coco, tmp_path / 'pennfudan.json')
    with pytest.raises(UsageError, match='already exists; pass overwrite=True'):
        write_coco(coco, tmp_path / 'pennfudan.json')
    ds = CocoDetectionDataset(tmp_path / 'PNGImages', read_coco(tmp_path / 'pennfudan.json'))
    image, target = ds[2]  # PennPed00001
    ids = np.asarray(Image.open(tmp_path / 'PedMasks' / 'PennPed00001_mask.png'))
    assert image.shape == (3, 40, 50) and target['labels'].tolist() == [1, 1, 1]
    assert all(torch.equal(m, torch.from_numpy((ids == k + 1).astype(np.uint8))) for k, m in
               enumerate(target['masks']))
    assert [a['image_id'] for a in pennfudan_to_coco(tmp_path, ['PennPed00001'])['annotations']] == [1, 1, 1]


def test_pennfudan_errors_name_the_file(tmp_path):
    _fake_pennfudan(tmp_path)
    Image.fromarray(np.zeros((40, 49), np.uint8)).save(tmp_path / 'PedMasks' / 'FudanPed00002_mask.png')
    with pytest.raises(UsageError, match=r'FudanPed00002_mask\.png is 49 x 40 but its image .* is 50 x 40'):
        pennfudan_to_coco(tmp_path)
    (tmp_path / 'PedMasks' / 'PennPed00001_mask.png').unlink()
    with pytest.raises(UsageError, match=r'PennPed00001\.png has no mask .*PennPed00001_mask\.png'):
        pennfudan_to_coco(tmp_path, ['PennPed00001'])
    with pytest.raises(UsageError, match=r'not a PennFudanPed folder .*PNGImages/ and PedMasks/'):
        pennfudan_to_coco(tmp_path / 'PNGImages')


def test_pennfudan_split_is_seeded_and_mixes_both_sources(tmp_path):
    """On the 170 names of the real set (FudanPed00001-00074, PennPed00001-00096; the files here are empty)."""
    (tmp_path / 'PNGImages').mkdir()
    (tmp_path / 'PedMasks').mkdir()
    stems = [f'FudanPed{i:05d}' for i in range(1, 75)] + [f'PennPed{i:05d}' for i in range(1, 97)]
    for s in stems:
        (tmp_path / 'PNGImages' / f'{s}.png').touch()
    train, held_out = pennfudan_split(tmp_path)
    assert (len(train), len(held_out)) == (120, 50) and sorted(train + held_out) == sorted(stems)
    assert (train, held_out) == pennfudan_split(tmp_path, seed=0)
    for part, fudan in ((train, 49), (held_out, 25)):  # seed 0
        assert sum(s.startswith('FudanPed') for s in part) == fudan
    assert pennfudan_split(tmp_path, seed=1) != (train, held_out)
    for s in stems[1:74]:  # one FudanPed image left: one part goes without
        (tmp_path / 'PNGImages' / f'{s}.png').unlink()
    with pytest.raises(UsageError, match='puts no FudanPed\\* image .* choose another seed'):
        pennfudan_split(tmp_path, n_train=60)


# ------------------------------------------------------------------------------------------------------- drawing


def test_draw_detections_and_save_image(tmp_path):
    image = torch.full((3, 60, 80), 40, dtype=torch.uint8)
    masks = torch.zeros(2, 1, 60, 80)
    masks[0, 0, 12:30, 10:40] = 0.9
    masks[1, 0, 40:55, 50:75] = 0.9
    output = dict(boxes=torch.tensor([[10., 12., 40., 30.], [50., 40., 75., 55.]]), labels=torch.tensor([1, 2]),
                  scores=torch.tensor([0.9, 0.2]), masks=masks)
    drawn = draw_detections(image, output, ['cat', 'dog'])
    assert drawn.shape == image.shape and drawn.dtype == torch.uint8
    assert not torch.equal(drawn[:, 12:30, 10:40], image[:, 12:30, 10:40])  # the kept detection is drawn
    assert torch.equal(drawn[:, 40:, 50:], image[:, 40:, 50:])  # the one under score_thresh is not
    assert torch.equal(image, torch.full((3, 60, 80), 40, dtype=torch.uint8))  # the input is not changed
    save_image(drawn, tmp_path / 'out.png')
    assert torch.equal(torch.from_numpy(np.array(Image.open(tmp_path / 'out.png'))).permute(2, 0, 1), drawn)
    with pytest.raises(UsageError, match=r'out\.png already exists; pass overwrite=True'):
        save_image(image, tmp_path / 'out.png')
    save_image(image, tmp_path / 'out.png', overwrite=True)
    assert np.asarray(Image.open(tmp_path / 'out.png')).max() == 40
    assert [p.name for p in tmp_path.iterdir()] == ['out.png']  # no temporary file left
