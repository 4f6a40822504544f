"""UperNet, segmentation data, metrics, training (resume exactness), train-seg / predict-seg on generated folders."""
import csv
import math
import signal

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from mlpvision.data.segmentation import CAMVID_CLASSES, SegEvalTransform, SegmentationFolder, SegTrainTransform
from mlpvision.dense import upernet
from mlpvision.engine import segmentation as seg
from mlpvision.engine.segmentation import SegConfig, confusion_matrix, fit_seg, poly_lr, seg_metrics

from conftest import assert_one_error_line, cli

TINY = dict(channels=16, aux_channels=8)  # UperNet widths for the CPU tests


class Pyramid(nn.Module):
    """The smallest module with the dense backbone contract: strided convs giving strides 4 / 8 / 16 / 32."""

    def __init__(self, widths=(4, 6, 8, 10)) -> None:
        super().__init__()
        chans = (3, *widths)
        self.stem = nn.Conv2d(3, widths[0], 4, 4)
        self.downs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 2, 2) for i in range(1, 4))
        self.out_channels = list(widths)
        self.strides = [4, 8, 16, 32]

    def forward(self, x):
        feats = [self.stem(x)]
        for d in self.downs:
            feats.append(d(feats[-1]))
        return feats


# --- the model ------------------------------------------------------------------------------------------------------

def _head_params(in_chs, nc, ch=512, aux_ch=256, scales=4):
    """UPerHead + FCNHead parameters from mmseg's structure (ConvModule = conv without bias + BN with 2 x C)."""
    def cm(i, o, k):
        return i * o * k * k + 2 * o
    ppm = scales * cm(in_chs[-1], ch, 1)
    bottleneck = cm(in_chs[-1] + scales * ch, ch, 3)
    lateral = sum(cm(c, ch, 1) for c in in_chs[:-1])
    fpn = 3 * cm(ch, ch, 3)
    fuse = cm(4 * ch, ch, 3)
    cls = ch * nc + nc
    aux = cm(in_chs[2], aux_ch, 3) + aux_ch * nc + nc
    return ppm + bottleneck + lateral + fpn + fuse + cls + aux


@pytest.mark.parametrize('name,official', [('as_mlp_tiny', 60e6), ('as_mlp_small', 81e6), ('as_mlp_base', 121e6)])
def test_upernet_params_match_the_official_ade20k_configs(name, official):
    # svip-lab/AS-MLP-Semantic-Segmentation README: UperNet + AS-MLP-T / S / B on ADE20K (150 classes) 60M / 81M / 121M
    with torch.device('meta'):
        model = upernet(name, 150)
    total = sum(p.numel() for p in model.parameters())
    head = total - sum(p.numel() for p in model.backbone.parameters())
    assert head == _head_params(model.backbone.out_channels, 150)
    assert abs(total - official) / official < 0.01, total


@pytest.mark.parametrize('name,official', [
    ('as_mlp_tiny', 937), pytest.param('as_mlp_small', 1024, marks=pytest.mark.slow),
    pytest.param('as_mlp_base', 1166, marks=pytest.mark.slow)])
def test_upernet_macs_match_the_official_counter(name, official):
    # README GMACs at 512x2048 from mmseg's tools/get_flops.py, which runs forward_dummy: backbone + decode head, no
    # auxiliary head; mmcv's counter also counts norms, activations and resizes, which ours leaves out (< 0.2%)
    import mlpvision
    with torch.device('meta'):
        model = upernet(name, 150, aux_head=False)
    gmacs = mlpvision.profile(model, (3, 512, 2048)).macs / 1e9
    assert official * 0.998 < gmacs < official, gmacs


def test_upernet_output_dict_at_a_non_square_size():
    model = upernet(Pyramid(), 5, **TINY).eval()
    out = model(torch.randn(2, 3, 64, 96))
    assert set(out) == {'out', 'aux'}
    assert out['out'].shape == out['aux'].shape == (2, 5, 64, 96)
    assert set(upernet(Pyramid(), 5, aux_head=False, **TINY).eval()(torch.randn(1, 3, 64, 96))) == {'out'}


def test_timm_cnn_backbone_runs_any_size():
    model = upernet('resnet10t', 3, **TINY).eval()
    assert model.backbone.strides == [4, 8, 16, 32]
    assert model(torch.randn(1, 3, 50, 70))['out'].shape == (1, 3, 50, 70)


def test_mlpvision_names_go_through_dense_backbone_unless_timm_is_asked_for():
    from mlpvision.dense import DenseBackbone
    from mlpvision.dense.timm_backbone import TimmPyramid
    with torch.device('meta'):
        dense = upernet('as_mlp_tiny', 11, **TINY)
        plain = upernet('as_mlp_tiny', 11, pyramid='timm', **TINY)
    assert isinstance(dense.backbone, DenseBackbone) and isinstance(plain.backbone, TimmPyramid)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(dense) - count(plain) == 2 * sum(dense.backbone.out_channels)  # AS-MLP's per-output GroupNorms
    with pytest.raises(ValueError, match="pyramid='x'"):
        upernet('resnet10t', 3, pyramid='x')


def test_upernet_rejects_backbone_options_with_a_module():
    with pytest.raises(TypeError, match='backbone options'):
        upernet(Pyramid(), 3, embed_dim=8)


# --- metrics and schedule -------------------------------------------------------------------------------------------

def test_metrics_against_a_hand_computed_confusion_matrix():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, 3, 255)
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 1]]  # rows true, columns predicted; the 255 pixel left out
    m = seg_metrics(cm, ['a', 'b', 'c'])
    # IoU = TP / (row + column - TP): a 1/(2+3-1), b 2/(3+3-2), c 1/(2+1-1)
    assert m.iou == pytest.approx([25.0, 50.0, 50.0])
    assert m.miou == pytest.approx(125 / 3)
    assert m.pixel_acc == pytest.approx(100 * 4 / 7)
    assert m.class_acc == pytest.approx([50.0, 200 / 3, 50.0])


def test_miou_leaves_out_classes_absent_from_labels_and_predictions():
    m = seg_metrics(confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 4, 255))
    assert math.isnan(m.iou[2]) and m.miou == 100.0


def test_poly_schedule_with_linear_warmup():
    assert poly_lr(0, 100, 1.0, warmup_steps=10, warmup_ratio=0.1) == pytest.approx(0.1)
    assert poly_lr(5, 100, 1.0, warmup_steps=10, warmup_ratio=0.1) == pytest.approx(0.95 * 0.55)
    assert poly_lr(50, 100, 1.0, warmup_steps=10) == pytest.approx(0.5)
    assert poly_lr(100, 100, 1.0, power=0.9, min_lr=0.01) == pytest.approx(0.01)


def test_slide_inference_equals_whole_for_a_pointwise_model():
    class Pointwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return {'out': self.conv(x)}

    model, x = Pointwise(), torch.randn(1, 3, 37, 53)
    whole = seg.predict_logits(model, x, 4, 'whole')
    slide = seg.predict_logits(model, x, 4, 'slide', crop=(16, 20), stride=(10, 12))
    torch.testing.assert_close(slide, whole)


# --- data -----------------------------------------------------------------------------------------------------------

def _scene(rng, h, w, num_classes):
    """An image whose colour follows its mask (vertical bands of class ids), noisy."""
    mask = np.zeros((h, w), np.uint8)
    for c in range(num_classes):
        mask[:, c * w // num_classes:] = c
    palette = np.array([(220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40)], np.int16)[:num_classes]
    img = np.clip(palette[mask] + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    return img, mask


def make_folder(root, splits=(('train', 8), ('val', 2)), size=(32, 48), num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in splits:
        (root / split / 'images').mkdir(parents=True)
        (root / split / 'masks').mkdir(parents=True)
        for i in range(n):
            img, mask = _scene(rng, *size, num_classes)
            mask[:2, :2] = 255
            Image.fromarray(img).save(root / split / 'images' / f'{i:03d}.jpg', quality=95)
            Image.fromarray(mask).save(root / split / 'masks' / f'{i:03d}.png')
    return root


def test_camvid_layout_maps_void_to_the_ignore_index(tmp_path):
    from mlpvision.data.segmentation import build_seg_dataset
    (tmp_path / 'val').mkdir()
    (tmp_path / 'valannot').mkdir()
    mask = np.array([[0, 10, 11], [3, 11, 5]], np.uint8)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / 'val' / 'a.png')
    Image.fromarray(mask).save(tmp_path / 'valannot' / 'a.png')
    info = build_seg_dataset('camvid', str(tmp_path), 'val')
    assert info.classes == CAMVID_CLASSES and len(info.classes) == 11
    _, y = info.dataset[0]
    assert y.tolist() == [[0, 10, 255], [3, 255, 5]]


def test_train_transform_keeps_image_and_mask_aligned(tmp_path):
    make_folder(tmp_path, splits=(('train', 1),), size=(40, 60), num_classes=2)
    ds = SegmentationFolder(tmp_path / 'train' / 'images', tmp_path / 'train' / 'masks', 2,
                            transform=SegTrainTransform(40, (32, 32), photometric=False))
    for _ in range(5):
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and y.shape == (32, 32)
        red = x[0] > x[1]  # class 0 is red, class 1 green: the flip / crop / scale moved both together
        labelled = (y == 0) | (y == 1)
        assert ((red & labelled) == ((y == 0) & labelled)).float().mean() > 0.95
        assert set(y.unique().tolist()) <= {0, 1, 255}
    x, y = SegEvalTransform(20)(*ds.load(0))
    assert x.shape == (3, 20, 30) and y.shape == (40, 60)


def test_photometric_distortion_stays_in_range_and_changes_the_image():
    from mlpvision.data.segmentation import photometric_distortion
    img = np.random.default_rng(0).integers(0, 256, (16, 24, 3)).astype(np.float32)
    outs = [photometric_distortion(img.copy()) for _ in range(8)]
    assert all(o.shape == img.shape and o.min() >= 0 and o.max() <= 255 for o in outs)
    assert any(np.abs(o - img).mean() > 5 for o in outs)


def _train_args(root, out, *extra):
    return ('train-seg', '--backbone', 'resnet10t', '--dataset', 'folder', '--data-dir', root, '--num-classes', 3,
            '--base-size', 32, '--crop', 32, 32, '--batch-size', 4, '--epochs', 1, '--channels', 8,
            '--aux-channels', 8, '--warmup-steps', 1, '--lr', 1e-3, '--threads', 1, '--output', out, *extra)


@pytest.mark.parametrize('breakage,fragment', [
    ('missing', 'have no mask'),
    ('size', 'masks must have their image'),
    ('ids', 'outside 0..2'),
    ('corrupt', 'corrupt image'),
])
def test_bad_data_gives_one_error_line(tmp_path, capsys, breakage, fragment):
    root = make_folder(tmp_path / 'data')
    masks = root / 'train' / 'masks'
    if breakage == 'missing':
        (masks / '003.png').unlink()
    elif breakage == 'size':
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / '003.png')
    elif breakage == 'ids':
        for f in masks.iterdir():
            Image.fromarray(np.full((32, 48), 7, np.uint8)).save(f)
    else:
        (root / 'train' / 'images' / '003.jpg').write_bytes(b'not a jpeg')
    rc, _, err = cli(capsys, *_train_args(root, tmp_path / 'run'))
    if breakage == 'ids':  # found while loading the first batch, after the start-up log line
        err = err.strip().splitlines()[-1]
    assert_one_error_line(rc, err, 'train-seg', fragment)


def test_train_seg_then_predict_seg_write_their_files(tmp_path, capsys):
    root = make_folder(tmp_path / 'data')
    rc, out, err = cli(capsys, *_train_args(root, tmp_path / 'run', '--epochs', 2, '--eval-mode', 'slide',
                                            '--slide-crop', 16, 16, '--slide-stride', 12, 12))
    assert rc == 0, err
    for name in ('last.pth', 'best.pth', 'metrics.csv', 'per_class.csv', 'confusion.csv'):
        assert (tmp_path / 'run' / name).is_file(), name
    assert 'mIoU' in out
    rc, out, err = cli(capsys, 'predict-seg', tmp_path / 'run' / 'best.pth', root / 'val' / 'images', '-o',
                       tmp_path / 'pred', '--threads', '1')
    assert rc == 0, err
    overlay = Image.open(tmp_path / 'pred' / '000_overlay.png')
    mask = np.asarray(Image.open(tmp_path / 'pred' / '000_mask.png'))
    assert overlay.size == (48, 32) and overlay.mode == 'RGB' and mask.shape == (32, 48) and mask.max() < 3
    rc, out, err = cli(capsys, 'validate-seg', tmp_path / 'run' / 'best.pth', '--eval-mode', 'slide', '--slide-crop',
                       16, 16, '--slide-stride', 12, 12, '-o', tmp_path / 'val', '--threads', '1')
    assert rc == 0, err
    best = [r for r in csv.DictReader(open(tmp_path / 'run' / 'metrics.csv')) if r['val_miou']][-1]['val_miou']
    assert f'mIoU {float(best):.2f}%' in out  # the same split, mode and weights as the run's last evaluation
    assert (tmp_path / 'val' / 'confusion.csv').is_file()
    rc, _, err = cli(capsys, *_train_args(root, tmp_path / 'run'))
    assert_one_error_line(rc, err, 'train-seg', 'already holds a run', '--resume auto')


def test_bf16_autocast_trains(tmp_path):
    root = make_folder(tmp_path / 'data')
    result = fit_seg(SegConfig(backbone='resnet10t', dataset='folder', data_dir=str(root), num_classes=3, base_size=32,
                               crop=[32, 32], batch_size=4, epochs=1, amp='bf16', threads=1, output=str(tmp_path / 'r'),
                               **TINY))
    assert 0 <= result.final.miou <= 100 and result.final.confusion.sum() == 2 * (32 * 48 - 4)


def test_predict_seg_refuses_a_classification_checkpoint(tmp_path, capsys):
    torch.save({'model': {}, 'mlpvision': {'model': 'resmlp_12'}}, tmp_path / 'c.pth')
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'a.png')
    rc, _, err = cli(capsys, 'predict-seg', tmp_path / 'c.pth', tmp_path / 'a.png', '-o', tmp_path / 'o')
    assert_one_error_line(rc, err, 'predict-seg', 'is a classification checkpoint', 'takes segmentation weights')


def test_resume_mid_epoch_is_exact(tmp_path, monkeypatch):
    """Two epochs straight, and the same run stopped by SIGINT in the middle of epoch 2 and resumed, end with
    identical weights (model dropout, drop path and the augmentations all draw from saved RNGs)."""
    root = make_folder(tmp_path / 'data', splits=(('train', 12), ('val', 2)))
    cfg = dict(backbone='resnet10t', model_kwargs=dict(drop_path_rate=0.1), dataset='folder', data_dir=str(root),
               num_classes=3, base_size=32, crop=[32, 32], batch_size=4, epochs=2, warmup_steps=2, lr=1e-3, threads=1,
               **TINY)
    straight = fit_seg(SegConfig(output=str(tmp_path / 'a'), **cfg)).model.state_dict()

    real_poly = seg.poly_lr

    def interrupt_at_step_4(step, *args, **kwargs):
        if step == 4:  # the rate of step 5 is set after step 4 (epoch 2, step 1 of 3): the loop stops after it
            signal.raise_signal(signal.SIGINT)
        return real_poly(step, *args, **kwargs)

    monkeypatch.setattr(seg, 'poly_lr', interrupt_at_step_4)
    with pytest.raises(KeyboardInterrupt, match='Resume with'):
        fit_seg(SegConfig(output=str(tmp_path / 'b'), **cfg))
    monkeypatch.setattr(seg, 'poly_lr', real_poly)
    ckpt = torch.load(tmp_path / 'b' / 'last.pth', weights_only=True)
    assert (ckpt['epoch'], ckpt['step_in_epoch']) == (1, 1)
    resumed = fit_seg(seg.resolve_seg_config(dict(resume='auto', output=str(tmp_path / 'b')))).model.state_dict()
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=0, msg=k)


DDP_SCRIPT = '''
import os, sys, torch
sys.path.insert(0, sys.argv[2])
from test_segmentation import TINY, make_folder
from pathlib import Path
from mlpvision.engine.segmentation import SegConfig, fit_seg
root = Path(sys.argv[1]) / 'data'
if os.environ['RANK'] == '0':
    make_folder(root, splits=(('train', 16), ('val', 3)))
torch.distributed.init_process_group('gloo')
torch.distributed.barrier()
r = fit_seg(SegConfig(backbone='resnet10t', dataset='folder', data_dir=str(root), num_classes=3, base_size=32,
                      crop=[32, 32], batch_size=4, epochs=1, threads=1, output=sys.argv[1] + '/run', **TINY))
torch.save({'model': r.model.state_dict(), 'pixels': int(r.final.confusion.sum())},
           f'{sys.argv[1]}/rank{os.environ["RANK"]}.pt')
'''


@pytest.mark.slow
def test_torchrun_two_processes_keep_replicas_identical(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    script = tmp_path / 'ddp_seg.py'
    script.write_text(DDP_SCRIPT)
    here = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=str(here.parent / 'src'), OMP_WAIT_POLICY='PASSIVE', OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           str(script), str(tmp_path), str(here)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0['model'][k], r1['model'][k]) for k in r0['model'])
    assert r0['pixels'] == r1['pixels'] == 3 * (32 * 48 - 4)  # both shards of the 3 val images summed on each rank
    ckpt = torch.load(tmp_path / 'run' / 'last.pth', weights_only=True)
    assert ckpt['global_step'] == 2 and len(ckpt['rng_per_rank']) == 2  # 16 images / 2 processes / batch 4


def _smallest_per_family():
    """The smallest variant of each family with a stride 4-32 pyramid (repmlp_cifar_pure has three stages)."""
    import mlpvision

    from conftest import smallest_per_family
    return smallest_per_family(tuple(n for n in mlpvision.list_models() if n != 'repmlp_cifar_pure'))


@pytest.mark.parametrize('name', _smallest_per_family())
def test_upernet_on_every_family_at_a_non_square_size(name):
    model = upernet(name, 4, **TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 160))
    assert out['out'].shape == out['aux'].shape == (1, 4, 96, 160)
