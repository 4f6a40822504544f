"""In-memory data: batched pad-crop / flip / normalise has the per-image transforms' distribution, every output is
one of their outputs, the loader's order and augmentation survive a mid-epoch resume, and the decode cache is used
only for the files and decoding it was made from."""
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from mlpvision.data.loader import set_loader_epoch, steps_per_epoch
from mlpvision.data.memory import BatchAugment, InMemoryLoader, decode_images

RAW = dict(mean=(0., 0., 0.), std=(1 / 255,) * 3)  # normalisation that leaves the 0..255 values as they are


def _image(h=8, w=8):
    return torch.arange(3 * h * w, dtype=torch.int64).remainder(251).add(1).to(torch.uint8).view(3, h, w)


def _candidates(img, p):
    """Every image RandomCrop(padding=p) + RandomHorizontalFlip can produce from ``img``, keyed by (oy, ox, flip)."""
    c, h, w = img.shape
    padded = torch.nn.functional.pad(img, (p, p, p, p))
    out = {}
    for oy in range(2 * p + 1):
        for ox in range(2 * p + 1):
            crop = padded[:, oy:oy + h, ox:ox + w]
            out[(oy, ox, False)] = crop
            out[(oy, ox, True)] = crop.flip(2)
    return out


def _classify(batch, cands):
    keys = list(cands)
    stack = torch.stack([cands[k] for k in keys]).float()  # K, C, H, W
    found = []
    for x in batch:
        hit = ((stack - x).abs().flatten(1).amax(1) == 0).nonzero().flatten().tolist()
        assert hit, 'an output is not a crop/flip of the padded input'
        found.append(keys[hit[0]])
    return found


def test_every_output_is_a_crop_or_flip_and_the_distribution_is_uniform():
    img = _image()
    n = 4000
    out = BatchAugment(**RAW, padding=2)(img.expand(n, -1, -1, -1).contiguous(), torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == (n, 3, 8, 8)
    found = _classify(out, _candidates(img, 2))
    offsets = np.array([[k[0], k[1]] for k in found])
    flips = np.array([k[2] for k in found])
    # 25 offsets, each expected n/25 = 160 times; the binomial sd is ~12.5, so 5 sd is 62
    counts = np.bincount(offsets[:, 0] * 5 + offsets[:, 1], minlength=25)
    assert counts.min() > 160 - 62 and counts.max() < 160 + 62
    assert abs(flips.mean() - 0.5) < 5 * 0.5 / np.sqrt(n)


def test_mean_and_variance_match_torchvision_per_image_transforms():
    img = _image()
    n = 3000
    batched = BatchAugment(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), padding=2)(
        img.expand(n, -1, -1, -1).contiguous(), torch.Generator().manual_seed(1))
    per_image = transforms.Compose([
        transforms.RandomCrop(8, padding=2), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))])
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    torch.manual_seed(2)
    ref = torch.stack([per_image(pil) for _ in range(n)])
    # per-pixel means and standard deviations over draws agree within sampling error
    se = ref.std(0) / np.sqrt(n)
    assert ((batched.mean(0) - ref.mean(0)).abs() <= 6 * se + 1e-3).all()
    assert torch.allclose(batched.std(0), ref.std(0), rtol=0.1, atol=0.05)


def test_eval_mode_only_normalises():
    img = _image()[None]
    aug = BatchAugment(mean=(0.5,) * 3, std=(0.25,) * 3, train=False)
    expected = (img.float() / 255 - 0.5) / 0.25
    assert torch.allclose(aug(img), expected, atol=1e-6)


def test_bad_batch_is_refused():
    with pytest.raises(ValueError, match='uint8'):
        BatchAugment(**RAW)(torch.zeros(2, 3, 8, 8))


def _loader(seed=3):
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 10
    return InMemoryLoader.train(images, labels, batch_size=8, augment=BatchAugment(**RAW), seed=seed)


def test_resumed_epoch_sees_the_same_batches():
    loader = _loader()
    assert steps_per_epoch(loader) == 5 and len(loader) == 5
    set_loader_epoch(loader, epoch=2, seed=3)
    full = list(loader)
    set_loader_epoch(loader, epoch=2, seed=3, skip_batches=3)
    rest = list(loader)
    assert len(rest) == 2 and steps_per_epoch(loader) == 5
    for (xa, ya), (xb, yb) in zip(full[3:], rest, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    set_loader_epoch(loader, epoch=3, seed=3)
    assert not torch.equal(next(iter(loader))[0], full[0][0])  # another epoch, another order and augmentation


def test_eval_loader_covers_every_sample_once():
    images = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    labels = torch.arange(10)
    shards = [InMemoryLoader.eval(images, labels, 3, BatchAugment(**RAW, train=False), rank=r, world_size=2)
              for r in range(2)]
    seen = sorted(int(v) for s in shards for _, y in s for v in y)
    assert seen == list(range(10))


class _PILDataset(torch.utils.data.Dataset):
    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        h, w = self.sizes[i]
        arr = (np.arange(h * w * 3).reshape(h, w, 3) + i).astype(np.uint8)
        return Image.fromarray(arr), i % 2, 0  # as ImageFileDataset: image, target, was_corrupt


def _image_files(root, n=4, shift=0, size=(6, 5)):
    """``n`` PNG files under ``root`` (two classes), pixels offset by ``shift``, and their ImageFileDataset."""
    from mlpvision.data.datasets import ImageFileDataset
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        arr = (np.arange(size[0] * size[1] * 3).reshape(*size, 3) + 10 * i + shift).astype(np.uint8)
        path = root / f'{i}.png'
        Image.fromarray(arr).save(path)
        samples.append((str(path), i % 2))
    return ImageFileDataset(samples, ['a', 'b'])


def test_decode_images_caches_and_checks_sizes(tmp_path, caplog):
    ds = _image_files(tmp_path / 'img')
    cache = tmp_path / 'cache' / 'train.npz'
    images, labels, corrupt = decode_images(ds, cache=cache)
    assert images.shape == (4, 3, 6, 5) and images.dtype == torch.uint8 and labels.tolist() == [0, 1, 0, 1]
    assert corrupt.tolist() == [0, 0, 0, 0]
    assert torch.equal(images[1].permute(1, 2, 0), torch.from_numpy(np.array(ds[1][0])))
    with caplog.at_level(logging.INFO, logger='mlpvision.data.memory'):
        again = decode_images(ds, cache=cache)
    assert torch.equal(again.images, images) and cache.is_file() and 'read 4 decoded images from' in caplog.text
    geometry = transforms.Compose([transforms.Resize(4), transforms.CenterCrop(4)])
    resized, _, _ = decode_images(_PILDataset([(6, 5), (9, 9)]), transform=geometry)
    assert resized.shape == (2, 3, 4, 4)
    expected = np.array(geometry(_PILDataset([(9, 9)] * 2)[1][0]))
    assert torch.equal(resized[1].permute(1, 2, 0), torch.from_numpy(expected))
    gray = decode_images(_PILDataset([(6, 5)]), transform=lambda im: im.convert('L')).images
    assert gray.shape == (1, 1, 6, 5)
    with pytest.raises(ValueError, match='one size'):
        decode_images(_PILDataset([(6, 5), (9, 9)]))


def test_cache_of_changed_images_is_decoded_again(tmp_path, caplog):
    """The stale-cache case: the same number of images under the same names, new pixels -> the new pixels."""
    ds = _image_files(tmp_path / 'img')
    cache = tmp_path / 'train.npz'
    old = decode_images(ds, cache=cache).images
    ds = _image_files(tmp_path / 'img', shift=100)
    for i, (path, _) in enumerate(ds.samples):  # a later modification time whatever the file system's resolution
        os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10 ** 9 * (i + 1)))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='mlpvision.data.memory'):
        new = decode_images(ds, cache=cache).images
    assert 'was made from other image files' in caplog.text and 'decoding again' in caplog.text
    assert not torch.equal(new, old)
    assert torch.equal(new[2].permute(1, 2, 0), torch.from_numpy(np.array(ds[2][0])))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='mlpvision.data.memory'):
        assert torch.equal(decode_images(ds, cache=cache).images, new)  # the rewritten cache is used again
    assert 'read 4 decoded images' in caplog.text


def test_cache_of_other_labels_or_decoding_is_decoded_again(tmp_path, caplog):
    from mlpvision.data.datasets import ImageFileDataset
    ds = _image_files(tmp_path / 'img')
    cache = tmp_path / 'train.npz'
    decode_images(ds, cache=cache)
    relabelled = ImageFileDataset([(p, 1 - t) for p, t in ds.samples], ds.classes)
    with caplog.at_level(logging.INFO, logger='mlpvision.data.memory'):
        assert decode_images(relabelled, cache=cache).labels.tolist() == [1, 0, 1, 0]
    assert 'other image files (names, sizes or modification times) or labels' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='mlpvision.data.memory'):
        smaller = decode_images(relabelled, transforms.Resize(3), cache=cache)
    assert smaller.images.shape == (4, 3, 3, 3)
    assert 'with other decoding parameters' in caplog.text and 'Resize(size=3' in caplog.text


@pytest.mark.parametrize('damage', ['truncated', 'not a zip', 'no key'])
def test_unreadable_or_old_cache_is_made_again(tmp_path, caplog, damage):
    ds = _image_files(tmp_path / 'img')
    cache = tmp_path / 'train.npz'
    good = decode_images(ds, cache=cache).images
    if damage == 'truncated':
        cache.write_bytes(cache.read_bytes()[:200])
    elif damage == 'not a zip':
        cache.write_text('hello')
    else:  # a cache of the first format: arrays without the key they were made from
        np.savez(cache, images=np.zeros((4, 3, 6, 5), np.uint8), labels=np.zeros(4, np.int64))
    with caplog.at_level(logging.INFO, logger='mlpvision.data.memory'):
        again = decode_images(ds, cache=cache).images
    assert torch.equal(again, good)
    assert ('by an older version' if damage == 'no key' else 'is unreadable') in caplog.text
    assert torch.equal(decode_images(ds, cache=cache).images, good)  # and the cache is whole again


def test_a_dataset_of_unknown_source_is_not_cached(tmp_path, caplog):
    cache = tmp_path / 'c.npz'
    with caplog.at_level(logging.INFO, logger='mlpvision.data.memory'):
        decode_images(_PILDataset([(6, 5)] * 2), cache=cache)
    assert not cache.exists() and 'does not say what its images are read from' in caplog.text


def test_corrupt_files_are_flagged_and_the_flags_reach_the_batches(tmp_path):
    from mlpvision.data.datasets import ImageFileDataset
    ds = _image_files(tmp_path / 'img')
    Path(ds.samples[1][0]).write_bytes(b'not an image')
    ds = ImageFileDataset(ds.samples, ds.classes, skip_corrupt=True)
    d = decode_images(ds, cache=tmp_path / 'c.npz')
    assert d.corrupt.tolist() == [0, 1, 0, 0]
    assert decode_images(ds, cache=tmp_path / 'c.npz').corrupt.tolist() == [0, 1, 0, 0]  # kept in the cache
    loader = InMemoryLoader.eval(d.images, d.labels, 3, BatchAugment(**RAW, train=False), corrupt=d.corrupt)
    assert [b[2].tolist() for b in loader] == [[0, 1, 0], [0]]
