"""`mlpvision train / validate / predict / demo`: results on a small trained model, and one clear error line (exit
status 2, no traceback) for each kind of bad input."""
import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlpvision.cli.main import main
from mlpvision.data import digits_arrays

from conftest import assert_one_error_line, cli

ROOT = Path(__file__).parents[1]
MODEL = ['--model', 'resmlp_s12', '--model-kwargs', 'embed_dim=16', 'depth=1', 'patch_size=8', '--img-size', '32']
TINY = [*MODEL, '--workers', '0', '--no-tensorboard', '--no-plot', '--no-progress', '--threads', '1']


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
    """A small model trained for two epochs on the digits (the demo's data and preprocessing)."""
    out = tmp_path_factory.mktemp('digits') / 'run'
    rc = main(['train', '--recipe', 'digits', '--epochs', '2', '--model-kwargs', 'embed_dim=32', 'depth=2',
               'patch_size=8', '--output', str(out), '--no-progress', '--no-tensorboard'])
    assert rc == 0
    return out


def test_train_prints_where_the_results_are(digits_run, capsys):
    assert {'best.pth', 'last.pth', 'metrics.csv', 'config.yaml', 'curves.png'} <= {p.name for p in
                                                                                   digits_run.iterdir()}
    assert (digits_run / 'curves.png').read_bytes()[:4] == b'\x89PNG'


def test_validate_writes_confusion_matrix(digits_run, capsys, tmp_path):
    rc, out, err = cli(capsys, 'validate', digits_run / 'best.pth', '--output', tmp_path, '--workers', '0')
    assert rc == 0, err
    assert 'resmlp_s12 (train form) on digits (val, 360 images): top-1' in out
    png = tmp_path / 'confusion_best_digits_val.png'
    assert png.read_bytes()[:4] == b'\x89PNG'
    rows = (tmp_path / 'per_class_best_digits_val.csv').read_text().splitlines()
    assert rows[0] == 'class,images,correct,accuracy' and len(rows) == 11
    assert sum(int(r.split(',')[1]) for r in rows[1:]) == 360
    top1 = float(out.split('top-1 ')[1].split('%')[0])
    assert top1 == pytest.approx(100 * sum(int(r.split(',')[2]) for r in rows[1:]) / 360, abs=0.01)
    # the deploy (re-parameterised) form gives the same accuracy
    rc, out2, _ = cli(capsys, 'validate', digits_run / 'best.pth', '--deploy', '--output', tmp_path, '--workers', '0')
    assert rc == 0 and 're-parameterised form' in out2 and f'top-1 {top1:.2f}%' in out2


def test_validate_official_format_deploy_checkpoint(digits_run, capsys, tmp_path):
    """A bare deploy-form state dict, as an official converter would write it: the form is found by itself."""
    import mlpvision
    meta = torch.load(digits_run / 'best.pth', weights_only=True)['mlpvision']
    kwargs = meta['model_kwargs']
    model = mlpvision.create_model('resmlp_s12', checkpoint_path=str(digits_run / 'best.pth'), **kwargs)
    torch.save({'model': mlpvision.reparameterize(model).state_dict()}, tmp_path / 'deploy.pth')
    argv = ['validate', tmp_path / 'deploy.pth', '--model', 'resmlp_s12', '--dataset', 'digits', '--workers', '0',
            '--model-kwargs', *[f'{k}={v}' for k, v in kwargs.items()]]
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    assert 'resmlp_s12 (deploy form) on digits' in out


def test_predict_top_k(digits_run, capsys, tmp_path):
    _, _, xva, yva = digits_arrays()
    for i in range(3):
        Image.fromarray(xva[i]).save(tmp_path / f'digit{i}_label{yva[i]}.png')
    rc, out, err = cli(capsys, 'predict', digits_run / 'best.pth', tmp_path, '--topk', '3')
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith(str(tmp_path / f'digit{i}_label{yva[i]}.png'))
        probs = [float(p.split('%')[0]) for p in line.split('(')[1:]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 100.05


def test_predict_corrupt_image(digits_run, capsys, tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / 'ok.png')
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    rc, _, err = cli(capsys, 'predict', digits_run / 'best.pth', tmp_path)
    assert_one_error_line(rc, err, 'predict', 'broken.png', '--skip-corrupt')
    rc, out, err = cli(capsys, 'predict', digits_run / 'best.pth', tmp_path, '--skip-corrupt')
    assert rc == 0 and out.count('ok.png') == 1 and '1 corrupt images skipped' in out


def test_checkpoint_of_another_model(digits_run, capsys, tmp_path):
    rc, _, err = cli(capsys, 'validate', digits_run / 'best.pth', '--model', 'resmlp_s24')
    assert_one_error_line(rc, err, 'validate', 'holds a resmlp_s12, not a resmlp_s24', 'leave --model out')
    rc, _, err = cli(capsys, 'train', '--dataset', 'fake', '--fake-size', '16', '--batch-size', '4', '--epochs', '1',
                     '--finetune', digits_run / 'best.pth', '--output', tmp_path / 'ft', *TINY)
    assert_one_error_line(rc, err, 'train', 'does not fit resmlp_s12', 'mis-shaped')
    (tmp_path / 'cut.pth').write_bytes((digits_run / 'best.pth').read_bytes()[:1000])
    rc, _, err = cli(capsys, 'validate', tmp_path / 'cut.pth')
    assert_one_error_line(rc, err, 'validate', 'could not be read')
    torch.save({'model': {'w': torch.ones(2)}}, tmp_path / 'official.pth')
    rc, _, err = cli(capsys, 'validate', tmp_path / 'official.pth')
    assert_one_error_line(rc, err, 'validate', 'pass --model')


def _folder(root, images_per_class=2, corrupt=None):
    for c in ('a', 'b'):
        for split in ('train', 'val'):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(images_per_class):
                Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(d / f'{i}.png')
    if corrupt:
        (root / corrupt).write_bytes(b'not an image at all')
    return root


def test_bad_dataset_inputs(capsys, tmp_path):
    rc, _, err = cli(capsys, 'train', '--dataset', 'imagefolder', '--data-dir', tmp_path / 'missing', *TINY)
    assert_one_error_line(rc, err, 'train', 'missing', 'does not exist')
    (tmp_path / 'empty' / 'train' / 'cat').mkdir(parents=True)
    (tmp_path / 'empty' / 'val' / 'cat').mkdir(parents=True)
    rc, _, err = cli(capsys, 'train', '--dataset', 'imagefolder', '--data-dir', tmp_path / 'empty', *TINY)
    assert_one_error_line(rc, err, 'train', 'no images')
    rc, _, err = cli(capsys, 'train', '--dataset', 'imagenet', *TINY)
    assert rc == 2 and "argument --dataset: invalid choice: 'imagenet'" in err and "'imagefolder', 'cifar10'" in err
    rc, _, err = cli(capsys, 'train', '--dataset', 'cifar10', '--data-dir', tmp_path, *TINY)
    assert_one_error_line(rc, err, 'train', 'CIFAR10 not found', '--download')
    rc, _, err = cli(capsys, 'train', '--dataset', 'fake', '--fake-size', '16', '--batch-size', '64',
                     '--output', tmp_path / 'big', *TINY)
    assert_one_error_line(rc, err, 'train', 'batch size 64', '16 training images', '--batch-size 16')
    rc, _, err = cli(capsys, 'train', '--recipe', 'digits', '--lr-scale', 'cubic')
    assert_one_error_line(rc, err, 'train', "unknown lr scale 'cubic'")


IN_MEMORY = ['--data-in-memory', '--train-crop', 'pad', '--color-jitter', '0']


@pytest.mark.parametrize('in_memory', [False, True], ids=['per-image', 'in-memory'])
def test_corrupt_training_image(capsys, caplog, tmp_path, in_memory):
    """A corrupt file stops the run naming it; with --skip-corrupt it is replaced and counted, in both data paths
    alike: per epoch in metrics.csv, and in one line at the end."""
    data = _folder(tmp_path / 'data', corrupt='train/b/1.png')
    common = ['train', '--dataset', 'imagefolder', '--data-dir', data, '--batch-size', '2', '--epochs', '1', *TINY,
              *(IN_MEMORY if in_memory else [])]
    rc, _, err = cli(capsys, *common, '--output', tmp_path / 'r1')
    assert_one_error_line(rc, err.strip().splitlines()[-1], 'train', str(data / 'train' / 'b' / '1.png'),
                          '--skip-corrupt')
    with caplog.at_level(logging.INFO, logger='mlpvision'):
        rc, out, err = cli(capsys, *common, '--output', tmp_path / 'r2', '--skip-corrupt')
    assert rc == 0, err
    rows = list(csv.DictReader(open(tmp_path / 'r2' / 'metrics.csv')))
    assert rows[0]['corrupt_skipped'] == '1' and rows[0]['val_corrupt_skipped'] == '0'
    assert ('skipped over the run: 1 corrupt training images replaced by a readable one (corrupt_skipped)'
            in caplog.text)
    (data / 'val' / 'a' / '0.png').write_bytes(b'broken too')
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='mlpvision'):
        rc, out, err = cli(capsys, *common, '--output', tmp_path / 'r3', '--skip-corrupt')
    assert rc == 0, err
    rows = list(csv.DictReader(open(tmp_path / 'r3' / 'metrics.csv')))
    assert rows[0]['corrupt_skipped'] == '1' and rows[0]['val_corrupt_skipped'] == '1'
    assert '1 corrupt validation images left out of the scores (val_corrupt_skipped)' in caplog.text


def test_nan_loss_keeps_last_checkpoint(capsys, tmp_path):
    run = tmp_path / 'run'
    rc, _, err = cli(capsys, 'train', '--dataset', 'fake', '--fake-size', '16', '--batch-size', '4', '--epochs', '1',
                     '--output', run, *TINY)
    assert rc == 0, err
    before = (run / 'last.pth').read_bytes()
    rc, _, err = cli(capsys, 'train', '--resume', run / 'last.pth', '--epochs', '2', '--std', '1e-45', '1e-45',
                     '1e-45')
    assert_one_error_line(rc, err, 'train', 'loss is nan at epoch 2, step 1', 'last good checkpoint',
                          str(run / 'last.pth'))
    assert (run / 'last.pth').read_bytes() == before


def test_worker_errors_are_one_line_in_a_real_process(tmp_path):
    """The corrupt image is met in a DataLoader worker process: the message still names the file, no traceback."""
    data = _folder(tmp_path / 'data', corrupt='train/a/0.png')
    env = dict(os.environ, PYTHONPATH=str(ROOT / 'src'))
    proc = subprocess.run(
        [sys.executable, '-m', 'mlpvision.cli.main', 'train', '--dataset', 'imagefolder', '--data-dir', str(data),
         '--batch-size', '2', '--epochs', '1', '--output', str(tmp_path / 'run'), *MODEL, '--workers', '1',
         '--no-tensorboard', '--no-plot', '--no-progress'],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert 'Traceback' not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if 'error:' in ln]
    assert errors == [f"mlpvision train: error: corrupt image '{data / 'train' / 'a' / '0.png'}' (not an image PIL "
                      f"can read); remove it or pass --skip-corrupt"], proc.stderr


@pytest.mark.slow
def test_demo_reaches_95_percent(tmp_path, capsys):
    rc, out, err = cli(capsys, 'demo', '--output', tmp_path / 'demo', '--no-table')
    assert rc == 0, err
    top1 = float(out.split('top-1 ')[1].split('%')[0])
    assert top1 >= 95.0, out
    for name in ('best.pth', 'metrics.csv', 'curves.png'):
        assert str(tmp_path / 'demo' / name) in out


def test_list_recipes(capsys):
    rc, out, _ = cli(capsys, 'train', '--list-recipes')
    assert rc == 0 and {'digits', 'resmlp_imagenet', 'stripmlp_cifar100'} <= set(out.split())
