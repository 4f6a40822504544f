"""Datasets, splits, transforms and samplers of mlpvision.data (no downloads: synthetic folders and bundled data)."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from mlpvision.data import (
    CorruptImageError,
    DatasetError,
    build_dataset,
    build_transform,
    caltech101_split,
    create_train_loader,
    digits_arrays,
    resolve_data_config,
    scan_image_folder,
    set_loader_epoch,
    steps_per_epoch,
)
from mlpvision.data.transforms import DataConfig


def _write_folder(root, classes: dict[str, int], size=(12, 10)):
    """``root/<class>/img<i>.png`` with ``classes[class]`` images each."""
    rng = np.random.default_rng(0)
    for c, n in classes.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / c / f'img{i:03d}.png')


def test_digits_split_is_fixed_and_stratified():
    xtr, ytr, xva, yva = digits_arrays()
    assert xtr.shape == (1437, 8, 8) and xva.shape == (360, 8, 8) and xtr.dtype == np.uint8
    assert xtr.max() == 255 and xtr.min() == 0
    assert set(np.bincount(yva)) <= {35, 36, 37}  # 20% of each class's ~180 images
    again = digits_arrays()
    assert np.array_equal(again[0], xtr) and np.array_equal(again[3], yva)
    info = build_dataset('digits', 'val')
    assert info.num_classes == 10 and info.in_chans == 1 and len(info.dataset) == 360
    img, target = info.dataset[0]
    assert img.mode == 'L' and img.size == (8, 8) and target == int(yva[0])


def test_caltech101_split_per_class_80_20_seed_1024(tmp_path):
    _write_folder(tmp_path, {'BACKGROUND_Google': 3, 'accordion': 10, 'airplanes': 7, 'anchor': 1})
    classes, files = scan_image_folder(tmp_path, exclude=('BACKGROUND_Google',))
    assert classes == ['accordion', 'airplanes', 'anchor']
    train, val = caltech101_split(files)
    per_class = lambda s, t: sum(1 for _, y in s if y == t)  # noqa: E731
    assert [per_class(train, t) for t in range(3)] == [8, 5, 0]  # int(n * 0.8), as the official script
    assert [per_class(val, t) for t in range(3)] == [2, 2, 1]
    assert not {f for f, _ in train} & {f for f, _ in val}
    # the official procedure: one random.Random(1024) shuffling each class's (here sorted) files in turn
    rng = random.Random(1024)
    expected = []
    for t, fs in enumerate(files):
        fs = sorted(fs)
        rng.shuffle(fs)
        expected += [(f, t) for f in fs[:int(len(fs) * 0.8)]]
    assert train == expected
    info = build_dataset('caltech101', 'val', str(tmp_path))
    assert info.classes == classes and len(info.dataset) == 5


def test_imagefolder_layout_and_errors(tmp_path):
    _write_folder(tmp_path / 'train', {'cat': 3, 'dog': 2})
    _write_folder(tmp_path / 'val', {'cat': 1, 'dog': 1})
    info = build_dataset('imagefolder', 'train', str(tmp_path))
    assert info.classes == ['cat', 'dog'] and len(info.dataset) == 5
    img, target, corrupt = info.dataset[4]
    assert img.size == (10, 12) and target == 1 and corrupt == 0
    with pytest.raises(DatasetError, match='does not exist'):
        build_dataset('imagefolder', 'train', str(tmp_path / 'nope'))
    (tmp_path / 'empty' / 'train' / 'cat').mkdir(parents=True)
    with pytest.raises(DatasetError, match='no images'):
        build_dataset('imagefolder', 'train', str(tmp_path / 'empty'))
    (tmp_path / 'noclass' / 'train').mkdir(parents=True)
    with pytest.raises(DatasetError, match='no class sub-folders'):
        build_dataset('imagefolder', 'train', str(tmp_path / 'noclass'))
    with pytest.raises(DatasetError, match="no 'val' folder"):
        build_dataset('imagefolder', 'val', str(tmp_path / 'empty'))
    with pytest.raises(DatasetError, match='unknown dataset'):
        build_dataset('imagenet22k', 'train', str(tmp_path))
    with pytest.raises(DatasetError, match='needs --data-dir'):
        build_dataset('cifar10', 'train')


def test_cifar_missing_says_download(tmp_path):
    with pytest.raises(DatasetError, match='--download'):
        build_dataset('cifar100', 'train', str(tmp_path))


def test_corrupt_image_named_or_skipped(tmp_path):
    _write_folder(tmp_path / 'train', {'a': 2, 'b': 2})
    bad = tmp_path / 'train' / 'a' / 'img001.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
    info = build_dataset('imagefolder', 'train', str(tmp_path))
    with pytest.raises(CorruptImageError, match='img001.png'):
        info.dataset[1]
    info = build_dataset('imagefolder', 'train', str(tmp_path), skip_corrupt=True)
    img, target, corrupt = info.dataset[1]  # replaced by the next readable image
    assert corrupt == 1 and target == 1 and img.size == (10, 12)
    assert info.dataset[0][2] == 0


def test_fake_dataset_is_deterministic():
    info = build_dataset('fake', 'train', fake_size=12, fake_classes=3, fake_image_size=(16, 16))
    a, b = info.dataset[5], info.dataset[5]
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and a[1] == b[1] and a[0].size == (16, 16)
    assert len(info.dataset) == 12 and len(build_dataset('fake', 'val', fake_size=12).dataset) == 8


def test_transforms_channels_and_sizes():
    dc = DataConfig((1, 32, 32), (0.5,), (0.5,), 'bilinear', 1.0)
    img = Image.fromarray(np.zeros((8, 8), np.uint8))
    for training in (False, True):
        x = build_transform(dc, training, scale=(0.7, 1.0), hflip=0.0, color_jitter=0.0)(img)
        assert x.shape == (1, 32, 32)
        assert torch.allclose(x, torch.full_like(x, -1.0))  # (0 - 0.5) / 0.5
    x = build_transform(dc, True, train_crop='pad')(img)
    assert x.shape == (1, 32, 32)
    rgb = DataConfig((3, 24, 24), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 'bicubic', 0.875)
    x = build_transform(rgb, True, auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25)(img)
    assert x.shape == (3, 24, 24)


def test_resolve_data_config_from_model():
    import mlpvision
    m = mlpvision.create_model('resmlp_s12', embed_dim=16, depth=1, patch_size=8, img_size=32)
    dc = resolve_data_config(m, in_chans=1)
    assert dc.input_size == (1, 32, 32) and dc.crop_pct == 0.9 and dc.interpolation == 'bicubic'
    assert dc.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))


def test_resumable_sampler_skips_the_batches_already_seen():
    data = list(range(40))
    loader = create_train_loader(data, batch_size=4, seed=3)
    assert steps_per_epoch(loader) == 10
    set_loader_epoch(loader, 2, seed=3)
    full = [b.tolist() for b in loader]
    set_loader_epoch(loader, 2, seed=3, skip_batches=6)
    assert [b.tolist() for b in loader] == full[6:] and steps_per_epoch(loader) == 10
    set_loader_epoch(loader, 3, seed=3)
    assert [b.tolist() for b in loader] != full  # a new order every epoch
    rep = create_train_loader(data, batch_size=4, seed=3, aug_repeats=3)
    set_loader_epoch(rep, 0, seed=3)
    first = next(iter(rep)).tolist()
    assert first[0] == first[1] == first[2]  # repeated augmentation: each image three times in a row


def test_randaugment_posterize_to_zero_bits_gives_a_black_image():
    from timm.data.auto_augment import AugmentOp

    build_transform(DataConfig((3, 8, 8), (0.5,) * 3, (0.5,) * 3, 'bilinear', 1.0), True, auto_augment='rand-m9')
    op = AugmentOp('PosterizeIncreasing', prob=1.0, magnitude=10)  # 4 - 4 = 0 bits kept
    img = Image.fromarray(np.full((4, 4, 3), 200, np.uint8))
    assert np.asarray(op(img)).max() == 0
