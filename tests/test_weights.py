"""WEIGHTS (issue 26): every command that takes weights opens all four forms through one opener
(`mlpvision.engine.loading.open_weights`): a registered name (random weights), NAME.TAG (released weights, served here
by a local HTTP server into a temporary cache), a checkpoint file (official format, with --model) and a folder of
`mlpvision convert`. A tiny ResMLP-S12 (embed 16, depth 1, 32 px) stands for the release so that each command runs in
seconds; the tag's registered URL is pointed at the server for the test."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models._registry import _model_pretrained_cfgs

import mlpvision
from mlpvision.cli.main import main
from mlpvision.engine.loading import open_weights, require_task
from mlpvision.errors import UsageError
from mlpvision.models import _registry
from test_pretrained import _pth, _Server

TAG = 'resmlp_s12.fb_in1k'
KW = ['--model-kwargs', 'embed_dim=16', 'depth=1', 'img_size=32']
FORMS = ('name', 'tag', 'file', 'folder')


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return mlpvision.create_model('resmlp_s12', embed_dim=16, depth=1, img_size=32).eval()


@pytest.fixture
def weights(tmp_path, monkeypatch, tiny):
    """WEIGHTS of each form, and the served release behind the tag."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with _Server() as server:
        server.files['tiny.pth'] = _pth(tiny.state_dict())
        url = f'{server.url}/ok/tiny.pth'
        monkeypatch.setitem(_model_pretrained_cfgs, TAG, dataclasses.replace(_model_pretrained_cfgs[TAG], url=url))
        monkeypatch.setitem(_registry._WEIGHTS, TAG, dataclasses.replace(_registry._WEIGHTS[TAG], page=url))
        official = tmp_path / 'official.pth'
        torch.save({'model': tiny.state_dict()}, official)  # a wrapped state dict: names no model
        folder = tmp_path / 'converted'
        assert main(['convert', str(official), '--model', 'resmlp_s12', '-o', str(folder), *KW]) == 0
        images = tmp_path / 'images'
        images.mkdir()
        rng = np.random.default_rng(0)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f'{i}.png')
        # (WEIGHTS, the options that go with it): options last, as --model-kwargs takes every word after it
        yield dict(name=('resmlp_s12', KW), tag=(TAG, KW), file=(str(official), ['--model', 'resmlp_s12', *KW]),
                   folder=(str(folder), []), images=images, tiny=tiny, server=server)


@pytest.mark.parametrize('form', FORMS)
def test_open_weights_opens_every_form(weights, form):
    source = weights[form][0]
    kwargs = dict(embed_dim=16, depth=1, img_size=32) if form != 'folder' else {}
    loaded = open_weights(source, model='resmlp_s12' if form == 'file' else None, model_kwargs=kwargs)
    assert loaded.kind == form and loaded.task == 'classification' and loaded.name == 'resmlp_s12'
    x = torch.randn(2, 3, 32, 32)
    same = torch.equal(loaded.model(x), weights['tiny'](x))
    assert same == (form != 'name')  # a bare name has its own random weights
    assert not loaded.model.training


@pytest.mark.parametrize('form', FORMS)
def test_every_command_takes_every_form(weights, form, tmp_path, capsys):
    (w, opts), images = weights[form], weights['images']
    assert main(['predict', w, str(images / '0.png'), '-k', '2', *opts]) == 0
    assert main(['validate', w, '--dataset', 'fake', '-o', str(tmp_path / 'val'), '-b', '64', '-j', '0', *opts]) == 0
    assert main(['viz', 'weights', w, '-o', str(tmp_path / 'viz'), *opts]) == 0
    assert main(['convert', w, '-o', str(tmp_path / 'conv'), *opts]) == 0
    assert main(['export', w, '--format', 'pt2', '-o', str(tmp_path / 'm.pt2'), *opts]) == 0
    out = capsys.readouterr().out
    assert 'top-1' in out and 'verified against eager' in out and 'model.safetensors' in out
    if form != 'name':  # fine-tuning starts from weights; a bare name has none (below)
        assert main(['train', '--dataset', 'fake', '--fake-size', '8', '--fake-classes', '3', '--model',
                     'resmlp_s12', '--finetune', w, '--epochs', '1', '-b', '4', '-j', '0', '--threads', '1',
                     '--no-progress', '--no-plot', '-o', str(tmp_path / 'ft'), *KW]) == 0


@pytest.mark.parametrize('form', FORMS)
def test_quantize_takes_every_form(weights, form, tmp_path):
    w, opts = weights[form]
    assert main(['quantize', w, '--calib-dir', str(weights['images']), '--calib-images', '2', '-b', '2',
                 '-o', str(tmp_path / 'q.safetensors'), *opts]) == 0


def test_finetune_from_a_bare_name_says_it_has_no_weights(weights, tmp_path, capsys):
    rc = main(['train', '--dataset', 'fake', '--fake-size', '8', '--fake-classes', '3', '--model', 'resmlp_s12',
               '--finetune', 'resmlp_s12', '--epochs', '1', '-o', str(tmp_path / 'ft'), *KW])
    assert rc == 2 and 'a model name alone has random weights' in capsys.readouterr().err


def test_pretrained_is_the_default_tag(weights, tmp_path, capsys):
    assert main(['train', '--dataset', 'fake', '--fake-size', '8', '--fake-classes', '3', '--model', 'resmlp_s12',
                 '--pretrained', '--epochs', '1', '-b', '4', '-j', '0', '--threads', '1', '--no-progress',
                 '--no-plot', '-o', str(tmp_path / 'ft'), *KW]) == 0
    config = (tmp_path / 'ft' / 'config.yaml').read_text()
    assert f'finetune: {TAG}' in config
    assert weights['server'].requests == ['/ok/tiny.pth']


def test_unknown_weights_name_the_closest_models(capsys):
    assert main(['predict', 'resmlp_s13', 'x.png']) == 2
    err = capsys.readouterr().err
    assert 'neither a file, a folder nor a model name' in err and 'resmlp_s12' in err


def test_a_segmentation_checkpoint_in_a_classification_command_names_the_task(tmp_path, capsys):
    from mlpvision.engine.segmentation import SegConfig, fit_seg
    from test_segmentation import TINY, make_folder

    root = make_folder(tmp_path / 'data')
    fit_seg(SegConfig(backbone='resnet10t', dataset='folder', data_dir=str(root), num_classes=3, base_size=32,
                      crop=[32, 32], batch_size=4, epochs=1, threads=1, output=str(tmp_path / 'r'), **TINY))
    ckpt = tmp_path / 'r' / 'best.pth'
    loaded = open_weights(ckpt)
    assert loaded.task == 'segmentation'
    with pytest.raises(UsageError, match='is a segmentation checkpoint .* validate, predict -o DIR'):
        require_task(loaded, 'classification', 'export')
    for argv in (['export', str(ckpt), '--format', 'pt2', '-o', str(tmp_path / 'm.pt2')],
                 ['convert', str(ckpt), '-o', str(tmp_path / 'c')],
                 ['quantize', str(ckpt), '--calib-dir', str(root), '-o', str(tmp_path / 'q.safetensors')],
                 ['viz', 'weights', str(ckpt)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert 'is a segmentation checkpoint' in err and 'KeyError' not in err, argv


def test_outputs_are_not_overwritten(weights, tmp_path, capsys):
    target = tmp_path / 'm.pt2'
    target.write_text('a run of mine')
    w = weights['name']
    assert main(['export', w[0], '--format', 'pt2', '-o', str(target), *w[1]]) == 2
    assert '--overwrite' in capsys.readouterr().err and target.read_text() == 'a run of mine'
    official, opts = weights['file']
    before = open(official, 'rb').read()
    assert main(['export', official, '--format', 'pt2', '-o', official, '--overwrite', *opts]) == 2
    assert "this command's input" in capsys.readouterr().err and open(official, 'rb').read() == before
    conv = tmp_path / 'conv'
    assert main(['convert', w[0], '-o', str(conv), *w[1]]) == 0
    cfg = (conv / 'config.json').read_text()
    tag, opts = weights['tag']
    assert main(['convert', tag, '-o', str(conv), *opts]) == 2
    assert '--overwrite' in capsys.readouterr().err and (conv / 'config.json').read_text() == cfg
    assert main(['convert', tag, '-o', str(conv), '--overwrite', *opts]) == 0
    assert json.loads((conv / 'config.json').read_text())['architecture'] == 'resmlp_s12'


def test_resume_from_best_pth_names_last_pth(tmp_path, capsys):
    run = tmp_path / 'run'
    common = ['train', '--dataset', 'fake', '--fake-size', '8', '--fake-classes', '3', '--model', 'resmlp_s12',
              '--epochs', '1', '-b', '4', '-j', '0', '--threads', '1', '--no-progress', '--no-plot']
    assert main([*common, '-o', str(run), *KW]) == 0
    capsys.readouterr()
    assert main(['train', '--resume', str(run / 'best.pth')]) == 2
    err = capsys.readouterr().err
    assert 'cannot resume a run' in err and 'last.pth' in err
