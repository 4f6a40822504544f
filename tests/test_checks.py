"""Nothing silently wrong (issue 27), on generated data: class names matched by name wherever a model meets a data set
(validate, fine-tuning, distillation, segmentation and detection evaluation), label values checked before the first
step (segmentation masks, the ignore index), a data set's shape reported (images per class, empty classes, files of one
stem), and a stale decode cache decoded again. The counters of skipped items are tested in test_cli_train.py."""
import csv
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mlpvision.data.checks import (
    ClassMismatchError,
    check_class_names,
    check_empty_classes,
    class_counts_line,
    class_mismatch,
    same_stem_groups,
)
from mlpvision.data.datasets import DatasetError
from mlpvision.data.segmentation import SegmentationFolder, build_seg_dataset
from mlpvision.errors import UsageError
from test_cli_train import TINY
from test_segmentation import make_folder

from conftest import assert_one_error_line, cli

TRAIN = ['train', '--dataset', 'imagefolder', '--batch-size', '2', '--epochs', '1', *TINY]


def _classes_folder(root, classes=('a', 'b'), per_class=2, splits=('train', 'val'), seed=0):
    """``root/<split>/<class>/<i>.png``: 20x20 images whose colour depends on the class."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = np.clip(60 * k + rng.integers(0, 40, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f'{i}.png')
    return root


@pytest.fixture(scope='module')
def ab_run(tmp_path_factory):
    """A tiny classifier trained for one epoch on classes 'a' and 'b'."""
    root = tmp_path_factory.mktemp('ab')
    data = _classes_folder(root / 'data')
    from mlpvision.cli.main import main
    assert main([str(a) for a in (*TRAIN, '--data-dir', data, '--output', root / 'run')]) == 0
    return root / 'run'


# --- 2. labels are matched by name --------------------------------------------------------------------------------

def test_class_mismatch_names_the_first_difference():
    assert class_mismatch(['a', 'b'], ['a', 'b']) is None
    assert class_mismatch(['a', 'b', 'c'], ['a', 'c', 'b']) == ("class 1 is 'b' in the model and 'c' in the data (the "
                                                                "same names in another order)")
    assert class_mismatch(['a', 'b'], ['a', 'b', 'c']) == ("class 2 is nothing in the model and 'c' in the data (2 "
                                                           "classes in the model, 3 in the data)")
    assert class_mismatch(['cat', 'dog'], ['cat', 'cow']).endswith("(the data lacks 'dog')")
    with pytest.raises(ClassMismatchError, match=r"^m was trained on other classes than d: class 0 is 'x' .*; fix "
                                                 r"it, or pass --relabel to read its outputs as these classes"):
        check_class_names(['x', 'y'], ['y', 'x'], 'm', 'd', fix='fix it')
    check_class_names(['x', 'y'], ['p', 'q'], 'm', 'd', relabel=True)  # the user says so: by position
    with pytest.raises(ClassMismatchError, match='m predicts 2 classes but d has 3'):
        check_class_names(['x', 'y'], ['x', 'y', 'z'], 'm', 'd', relabel=True)  # relabelling needs equal counts


def test_validate_compares_class_names(ab_run, tmp_path, capsys):
    same = _classes_folder(tmp_path / 'same', splits=('val',))
    rc, out, err = cli(capsys, 'validate', ab_run / 'best.pth', '--data-dir', same, '--output', tmp_path / 'v1',
                       '--workers', 0)
    assert rc == 0, err
    other = _classes_folder(tmp_path / 'other', classes=('a', 'c'), splits=('val',))
    rc, _, err = cli(capsys, 'validate', ab_run / 'best.pth', '--data-dir', other, '--output', tmp_path / 'v2',
                     '--workers', 0)
    assert_one_error_line(rc, err, 'validate', 'was trained on other classes than imagefolder (val)',
                          "class 1 is 'b' in the model and 'c' in the data", '--relabel')
    rc, out, err = cli(capsys, 'validate', ab_run / 'best.pth', '--data-dir', other, '--output', tmp_path / 'v3',
                       '--workers', 0, '--relabel')
    assert rc == 0, err
    assert 'per-class accuracy: a ' in out and ', c ' not in out  # the model's names are the ones reported


def test_finetune_compares_class_names_when_the_classifier_is_kept(ab_run, tmp_path, capsys):
    other = _classes_folder(tmp_path / 'xy', classes=('x', 'y'))
    common = [*TRAIN, '--data-dir', other, '--finetune', ab_run / 'best.pth']
    rc, _, err = cli(capsys, *common, '--output', tmp_path / 'f1')
    assert_one_error_line(rc, err.strip().splitlines()[-1], 'train', f"--finetune '{ab_run / 'best.pth'}' was trained "
                          "on other classes", "class 0 is 'a' in the model and 'x' in the data", '--relabel')
    assert not (tmp_path / 'f1' / 'last.pth').exists()
    rc, _, err = cli(capsys, *common, '--output', tmp_path / 'f2', '--relabel')
    assert rc == 0, err
    three = _classes_folder(tmp_path / 'xyz', classes=('x', 'y', 'z'))  # another size: a new classifier, no names
    rc, _, err = cli(capsys, *TRAIN, '--data-dir', three, '--finetune', ab_run / 'best.pth', '--output',
                     tmp_path / 'f3')
    assert rc == 0, err


def test_distillation_teacher_of_other_classes_is_refused(ab_run, tmp_path):
    from mlpvision.engine.distill import build_teacher
    with pytest.raises(ClassMismatchError, match=r"teacher checkpoint .* was trained on other classes than the data "
                                                 r"set: class 1 is 'b' in the model and 'c'.*trained on this data "
                                                 r"set$"):
        build_teacher('resmlp_s12', str(ab_run / 'best.pth'), ['a', 'c'], 3, (32, 32), torch.device('cpu'))


def _seg_checkpoint(path, classes, ignore_index=255):
    """A segmentation checkpoint of ``classes`` (an untrained tiny UperNet) as a training run writes it."""
    from mlpvision.data.segmentation import default_palette
    from mlpvision.engine.segmentation import SegConfig, _model_meta, build_seg_model
    cfg = SegConfig(backbone='resnet10t', channels=8, aux_channels=8, base_size=32, dataset='folder',
                    num_classes=len(classes), ignore_index=ignore_index)
    model = build_seg_model(cfg.backbone, len(classes), cfg.channels, cfg.aux_channels)
    meta = _model_meta(cfg, list(classes), default_palette(len(classes)))
    torch.save({'model': model.state_dict(), 'mlpvision': meta}, path)
    return path


def _camvid(root, split='val', n=1, values=(0, 3, 10, 11)):
    (root / split).mkdir(parents=True)
    (root / f'{split}annot').mkdir(parents=True)
    for i in range(n):
        mask = np.array(values, np.uint8)[np.arange(32 * 32).reshape(32, 32) % len(values)]
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / split / f'{i}.png')
        Image.fromarray(mask).save(root / f'{split}annot' / f'{i}.png')
    return root


def test_segmentation_validate_compares_class_names(tmp_path, capsys):
    ckpt = _seg_checkpoint(tmp_path / 'seg.pth', [f'class{i}' for i in range(11)])
    data = _camvid(tmp_path / 'CamVid')
    rc, _, err = cli(capsys, 'validate', ckpt, '--dataset', 'camvid', '--data-dir', data)
    assert_one_error_line(rc, err, 'validate', "class 0 is 'class0' in the model and 'Sky' in the data", '--relabel')
    rc, out, err = cli(capsys, 'validate', ckpt, '--dataset', 'camvid', '--data-dir', data, '--relabel')
    assert rc == 0, err
    assert 'mIoU' in out


# --- 3. label values are checked before the first step -------------------------------------------------------------

def test_ignore_index_that_is_a_class_id_is_refused(tmp_path, capsys):
    data = _camvid(tmp_path / 'CamVid', split='train')
    with pytest.raises(DatasetError, match=r"--ignore-index 3 is the id of class 'Road' \(class ids 0..10\): its "
                                           r"pixels would be left out of the loss and the mIoU"):
        build_seg_dataset('camvid', str(data), 'train', ignore_index=3)
    rc, _, err = cli(capsys, 'train', '--task', 'segment', '--dataset', 'camvid', '--data-dir', data, '--backbone',
                     'resnet10t', '--ignore-index', 3, '--output', tmp_path / 'run')
    assert_one_error_line(rc, err, 'train', "--ignore-index 3 is the id of class 'Road'")
    # an ignore value outside the ids, negative included (CamVid's void 11 becomes it)
    _, y = build_seg_dataset('camvid', str(data), 'train', ignore_index=-100).dataset[0]
    assert set(y.unique().tolist()) == {0, 3, 10, -100}


def test_jpeg_masks_are_refused(tmp_path):
    root = make_folder(tmp_path / 'data', splits=(('train', 2),))
    masks = root / 'train' / 'masks'
    for f in masks.iterdir():
        Image.open(f).save(f.with_suffix('.jpg'), quality=90)
        f.unlink()
    with pytest.raises(DatasetError, match=r"2 masks in .* are JPEGs \(first: '000.jpg'\): JPEG compression changes "
                                           r"the class ids along every edge; save the masks as PNG"):
        SegmentationFolder(root / 'train' / 'images', masks, 3)


def test_a_smoothly_resized_mask_is_named_as_such(tmp_path):
    root = make_folder(tmp_path / 'data', splits=(('train', 1),), num_classes=3)
    f = root / 'train' / 'masks' / '000.png'
    mask = Image.open(f)
    mask.resize((24, 16), Image.NEAREST).resize(mask.size, Image.BILINEAR).save(f)  # values between the ids
    ds = SegmentationFolder(root / 'train' / 'images', root / 'train' / 'masks', 3)
    with pytest.raises(DatasetError, match=r"000.png' holds class ids \[.*outside 0..2 .*distinct values look like a "
                                           r"mask resized smoothly or saved lossily"):
        ds.class_pixels()


def test_bad_mask_values_stop_the_run_before_the_first_step(tmp_path, capsys):
    """A bad value in the last training mask (which the first batches need not reach) stops the run at start-up."""
    root = make_folder(tmp_path / 'data', splits=(('train', 4), ('val', 1)))
    last = root / 'train' / 'masks' / '003.png'
    mask = np.asarray(Image.open(last)).copy()
    mask[5, 5] = 7
    Image.fromarray(mask).save(last)
    rc, _, err = cli(capsys, *_seg_train(root, tmp_path / 'run'))
    assert_one_error_line(rc, err.strip().splitlines()[-1], 'train', "003.png' holds class ids [7] outside 0..2")
    assert not (tmp_path / 'run' / 'last.pth').exists()


def test_detection_category_ids_must_be_declared(tmp_path):
    from mlpvision.data.detection import CocoDetectionDataset
    (tmp_path / 'img').mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'img' / 'a.png')
    ann = dict(images=[dict(id=1, file_name='a.png', height=8, width=8)], categories=[dict(id=1, name='thing')],
               annotations=[dict(id=1, image_id=1, category_id=7, bbox=[1, 1, 3, 3], iscrowd=0, area=9)])
    with pytest.raises(UsageError, match="has category_id 7, which categories does not declare"):
        CocoDetectionDataset(tmp_path / 'img', ann)


# --- 4. a data set's shape is reported ----------------------------------------------------------------------------

def test_class_counts_line_and_empty_classes():
    assert class_counts_line(['a', 'b'], [3, 1]) == 'a 3, b 1 images'
    many = [f'c{i:02d}' for i in range(20)]
    assert class_counts_line(many, list(range(5, 25)), shown=12) == ('5-24 images per class (median 15; fewest: '
                                                                     'c00 5, c01 6, c02 7)')
    assert class_counts_line(['a', 'b'], [1, 3], 'of the pixels', percent=True) == 'a 25.0%, b 75.0% of the pixels'
    with pytest.raises(DatasetError, match=r"1 of the 3 classes have no images in here: 'b'; .*--allow-empty-classes"):
        check_empty_classes(['a', 'b', 'c'], [2, 0, 1], 'here', allow=False)
    assert check_empty_classes(['a', 'b', 'c'], [2, 0, 1], 'here', allow=True) == ['b']
    assert same_stem_groups(['x/a.jpg', 'x/a.png', 'y/a.png', 'x/b.png']) == [['x/a.jpg', 'x/a.png']]


def test_empty_class_folder_is_named_and_the_shape_reported(tmp_path, capsys, caplog):
    data = _classes_folder(tmp_path / 'data', classes=('a', 'b', 'c'))
    for f in (data / 'train' / 'b').iterdir():
        f.unlink()
    Image.open(data / 'train' / 'a' / '0.png').save(data / 'train' / 'a' / '0.jpg')  # one picture twice
    rc, _, err = cli(capsys, *TRAIN, '--data-dir', data, '--output', tmp_path / 'r1')
    assert_one_error_line(rc, err.strip().splitlines()[-1], 'train', '1 of the 3 classes have no images in the '
                          f"training split of {data}: 'b'", '--allow-empty-classes')
    with caplog.at_level(logging.INFO, logger='mlpvision'):
        rc, _, err = cli(capsys, *TRAIN, '--data-dir', data, '--output', tmp_path / 'r2', '--allow-empty-classes')
    assert rc == 0, err
    assert 'training images per class: a 3, b 0, c 2 images; no images of \'b\'' in caplog.text
    assert 'validation images per class: a 2, b 2, c 2 images' in caplog.text
    assert "1 file names in the training split share a stem with another in their folder, e.g. " in caplog.text
    assert f"'{data / 'train' / 'a' / '0.jpg'}' and '{data / 'train' / 'a' / '0.png'}'" in caplog.text


def _seg_train(root, out, *extra):
    return ('train', '--task', 'segment', '--backbone', 'resnet10t', '--dataset', 'folder', '--data-dir', root,
            '--num-classes', 3, '--base-size', 32, '--crop', 32, 32, '--batch-size', 2, '--epochs', 1, '--channels', 8,
            '--aux-channels', 8, '--warmup-steps', 1, '--threads', 1, '--no-tensorboard', '--no-plot', '--output',
            out, *extra)


def test_segmentation_class_without_pixels_is_named(tmp_path, capsys, caplog):
    root = make_folder(tmp_path / 'data', splits=(('train', 2), ('val', 1)), num_classes=2)  # ids 0, 1 of 3
    rc, _, err = cli(capsys, *_seg_train(root, tmp_path / 'r1'))
    assert_one_error_line(rc, err.strip().splitlines()[-1], 'train', '1 of the 3 classes have no pixels in the '
                          "training masks", "'class2'", '--allow-empty-classes')
    with caplog.at_level(logging.INFO, logger='mlpvision'):
        rc, _, err = cli(capsys, *_seg_train(root, tmp_path / 'r2', '--allow-empty-classes'))
    assert rc == 0, err
    assert 'class2 0.0% of the labelled training pixels' in caplog.text


def test_segmentation_files_of_one_stem_are_named(tmp_path):
    root = make_folder(tmp_path / 'data', splits=(('train', 2),))
    images = root / 'train' / 'images'
    Image.open(images / '001.jpg').save(images / '001.png')
    with pytest.raises(DatasetError, match=r"'001.jpg' and '001.png' in .* have one stem, and images pair with masks "
                                           r"by stem; remove or rename one of them"):
        SegmentationFolder(images, root / 'train' / 'masks', 3)


def test_detection_category_without_objects_is_named(tmp_path, capsys):
    from mlpvision.data.detection import write_coco
    for split in ('train', 'val'):
        (tmp_path / split / 'images').mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / split / 'images' / 'a.png')
        write_coco(dict(images=[dict(id=1, file_name='a.png', height=32, width=32)],
                        categories=[dict(id=1, name='thing'), dict(id=5, name='ghost')],
                        annotations=[dict(id=1, image_id=1, category_id=1, bbox=[2, 2, 9, 9], iscrowd=0, area=81)]),
                   tmp_path / split / 'annotations.json')
    args = ('train', '--task', 'detect', '--model', 'retinanet', '--backbone', 'resnet10t', '--data-dir', tmp_path,
            '--threads', 1, '--output', tmp_path / 'run')
    rc, _, err = cli(capsys, *args)
    assert_one_error_line(rc, err.strip().splitlines()[-1], 'train', '1 of the 2 classes have no objects in the '
                          f"training annotations of {tmp_path} (train): 'ghost'", '--allow-empty-classes')


# --- 1. a cache is keyed by what it was made from (the decode itself: test_data_memory.py) ------------------------

def test_in_memory_training_decodes_changed_images_again(tmp_path, capsys, caplog):
    data = _classes_folder(tmp_path / 'data')
    common = [*TRAIN, '--data-dir', data, '--data-in-memory', '--train-crop', 'pad', '--color-jitter', '0',
              '--data-cache', tmp_path / 'cache']
    with caplog.at_level(logging.INFO, logger='mlpvision'):
        assert cli(capsys, *common, '--output', tmp_path / 'r1')[0] == 0
    first = list(csv.DictReader(open(tmp_path / 'r1' / 'metrics.csv')))[0]
    _classes_folder(tmp_path / 'data', seed=1)  # the same names and counts, other pixels
    for f in (data / 'val' / 'a').iterdir():
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10 ** 9))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='mlpvision'):
        assert cli(capsys, *common, '--output', tmp_path / 'r2')[0] == 0
    assert 'decoded-imagefolder-3x32x32-val.npz was made from other image files' in caplog.text
    second = list(csv.DictReader(open(tmp_path / 'r2' / 'metrics.csv')))[0]
    assert second['val_loss'] != first['val_loss']  # trained and evaluated on the new pixels, not the cached ones
