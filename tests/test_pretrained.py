"""Pretrained tags and ``pretrained=True`` without the internet: a local HTTP server (127.0.0.1, started and stopped
by a fixture) serves official-format checkpoints made from the parity fixtures; downloads go to a temporary cache
(``TORCH_HOME``). The weights loaded reproduce the official logits; broken downloads give one clear error and leave
nothing in the cache."""
import argparse
import http.server
import sys
import threading
import types

import pytest
import timm
import torch
from timm.models._registry import _model_pretrained_cfgs

import mlpvision
from mlpvision import CheckpointError
from mlpvision.models import _registry

from conftest import parity_record
from fill import fill_state_dict, make_input

TOL = 1e-4  # relative to the largest logit (tests/fixtures/parity/README.md)


def _assert_official(model, name):
    rec = parity_record(name)
    with torch.no_grad():
        y = model.eval()(make_input(**rec['input']))
    ref = torch.tensor(rec['logits'])
    assert (y - ref).abs().max().item() <= TOL * ref.abs().max().item()


def _pth(obj) -> bytes:
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _Server:
    """Files by path; ``/cut/...`` sends half the body under the full Content-Length, ``/page/...`` an HTML page
    with status 200 (what file hosts answer instead of a file), ``/gone/...`` a 404."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                kind, _, rest = self.path.lstrip('/').partition('/')
                body = server.files.get(rest)
                if kind == 'gone' or body is None:
                    self.send_error(404)
                    return
                if kind == 'page':
                    page = b'<!DOCTYPE html><html><body>Sign in to download</body></html>'
                    self.send_response(200)
                    self.send_header('Content-Type', 'text/html; charset=utf-8')
                    self.send_header('Content-Length', str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                self.send_response(200)
                self.send_header('Content-Type', 'application/octet-stream')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if kind == 'cut' else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'

    def __enter__(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    with _Server() as s:
        yield s


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty torch hub / timm cache for the test (TORCH_HOME), and no Hugging Face Hub access."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


@pytest.fixture(scope='module')
def resmlp_official() -> bytes:
    """resmlp_s12 in the deit release's format: a bare state_dict under the official key names."""
    return _pth(fill_state_dict(parity_record('resmlp_s12')['schema']))


def _cached(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_caches_and_reproduces_the_official_logits(server, cache, resmlp_official):
    """timm.create_model and mlpvision.create_model (train and deploy form) on one download, cached under the URL's
    file name where timm keeps its own, read once from the server; timm's num_classes / in_chans adaptation holds,
    in the deploy form too."""
    server.files['resmlp_12_no_dist.pth'] = resmlp_official
    url = f'{server.url}/ok/resmlp_12_no_dist.pth'
    model = timm.create_model('resmlp_s12.fb_in1k', pretrained=True, pretrained_cfg_overlay=dict(url=url))
    _assert_official(model, 'resmlp_s12')
    assert 'state_dict' not in model.pretrained_cfg and model.pretrained_cfg['url'] == url
    assert _cached(cache) == ['resmlp_12_no_dist.pth']
    deployed = mlpvision.create_model('resmlp_s12.fb_in1k', pretrained=True, deploy=True,
                                      pretrained_cfg_overlay=dict(url=url))
    assert mlpvision.is_reparameterized(deployed)
    _assert_official(deployed, 'resmlp_s12')
    assert server.requests == ['/ok/resmlp_12_no_dist.pth']  # the second model came from the cache
    # timm's classifier handling still applies: a new head of another size, the rest loaded
    ten = timm.create_model('resmlp_s12.fb_in1k', pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(url=url))
    assert ten.head.out_features == 10
    assert torch.equal(ten.stem.proj.weight, model.stem.proj.weight)
    gray = mlpvision.create_model('resmlp_s12', pretrained=True, in_chans=1, pretrained_cfg_overlay=dict(url=url))
    assert torch.allclose(gray.stem.proj.weight, model.stem.proj.weight.sum(1, keepdim=True))  # timm's adaptation
    # deploy=True with a new classifier: folded at the released size, only the classifier is new
    ten = timm.create_model('resmlp_s12', pretrained=True, deploy=True, num_classes=10,
                            pretrained_cfg_overlay=dict(url=url))
    trunk = {k: v for k, v in deployed.state_dict().items() if not k.startswith('head.')}
    assert ten.num_classes == 10 and trunk and all(torch.equal(v, ten.state_dict()[k]) for k, v in trunk.items())


def test_registered_tag_with_its_hash(server, cache, resmlp_official, monkeypatch):
    """The registered cfg itself (its URL pointed at the server) with a SHA-256 in the tag's Weights: a match loads,
    a mismatch is one clear error and leaves nothing in the cache."""
    import hashlib
    server.files['resmlp_12_no_dist.pth'] = resmlp_official
    url = f'{server.url}/ok/resmlp_12_no_dist.pth'
    import dataclasses
    key = 'resmlp_s12.fb_in1k'
    monkeypatch.setitem(_model_pretrained_cfgs, key, dataclasses.replace(_model_pretrained_cfgs[key], url=url))
    good = dataclasses.replace(_registry._WEIGHTS[key], page=url)
    monkeypatch.setitem(_registry._WEIGHTS, key, dataclasses.replace(good, sha256='0' * 64))
    with pytest.raises(CheckpointError, match='SHA-256 .* does not match the expected 0000'):
        timm.create_model(key, pretrained=True)
    assert _cached(cache) == []
    monkeypatch.setitem(_registry._WEIGHTS, key,
                        dataclasses.replace(good, sha256=hashlib.sha256(resmlp_official).hexdigest()))
    _assert_official(timm.create_model(key, pretrained=True), 'resmlp_s12')
    assert _cached(cache) == ['resmlp_12_no_dist.pth']


@pytest.mark.parametrize('kind, match', [
    ('cut', 'was cut short: .* of .* bytes arrived'),
    ('page', 'gave a web page .*text/html.*, not a checkpoint'),
    ('gone', 'HTTP 404'),
    ('hash', 'SHA-256 .* does not match the expected 123456'),
    ('junk', 'not a readable checkpoint'),
])
def test_broken_downloads_are_one_clear_error_and_leave_no_file(server, cache, kind, match):
    server.files['w.pth'] = server.files['w-123456.pth'] = _pth({'w': torch.zeros(3)})
    server.files['junk.pth'] = b'PK\x03\x04 not a zip archive'
    path = {'hash': 'ok/w-123456.pth', 'junk': 'ok/junk.pth'}.get(kind, f'{kind}/w.pth')
    with pytest.raises(CheckpointError, match=match) as e:
        mlpvision.create_model('resmlp_s12', pretrained=True, pretrained_cfg_overlay=dict(url=f'{server.url}/{path}'))
    assert '\n' not in str(e.value)
    assert _cached(cache) == []


def test_hire_mlp_training_checkpoint_with_namespace(server, cache):
    """Hire-MLP's release files are its training script's checkpoints, with an argparse.Namespace: read with
    weights_only (nothing executed), mapped and folded into the deploy form."""
    sd = fill_state_dict(parity_record('hire_mlp_tiny')['schema'])
    server.files['hire_mlp_tiny.pth'] = _pth({'model': sd, 'args': argparse.Namespace(model='hire_mlp_tiny', lr=1e-3),
                                              'epoch': 299})
    url = f'{server.url}/ok/hire_mlp_tiny.pth'
    model = timm.create_model('hire_mlp_tiny.in1k', pretrained=True, deploy=True, pretrained_cfg_overlay=dict(url=url))
    assert mlpvision.is_reparameterized(model)
    _assert_official(model, 'hire_mlp_tiny')


def test_manual_release_names_the_page_and_the_routes(cache):
    with pytest.raises(CheckpointError) as e:
        timm.create_model('as_mlp_tiny', pretrained=True)
    msg = str(e.value)
    for part in ('as_mlp_tiny.in1k is not a direct download', 'OneDrive', 'https://shanghaitecheducn-my.sharepoint',
                 "checkpoint_path=FILE", 'pretrained_cfg_overlay=dict(file=FILE)'):
        assert part in msg
    with pytest.raises(CheckpointError, match='hire_mlp_large.untrained has no released weights'):
        mlpvision.create_model('hire_mlp_large', pretrained=True)


def test_manual_download_through_the_file_route_with_a_swin_style_config(tmp_path, monkeypatch):
    """A Swin-Transformer-style training checkpoint (AS-MLP, Strip-MLP, RepMLPNet) pickles its yacs CfgNode: it is
    read as a dict without importing yacs, and the weights load through pretrained_cfg_overlay=dict(file=...)."""
    yacs, config = types.ModuleType('yacs'), types.ModuleType('yacs.config')

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
    config.CfgNode, yacs.config = CfgNode, config
    monkeypatch.setitem(sys.modules, 'yacs', yacs)
    monkeypatch.setitem(sys.modules, 'yacs.config', config)
    sd = fill_state_dict(parity_record('resmlp_s12')['schema'])
    path = tmp_path / 'ckpt_epoch_299.pth'
    torch.save({'model': sd, 'config': CfgNode(MODEL=CfgNode(TYPE='resmlp')), 'max_accuracy': 76.6}, path)
    monkeypatch.delitem(sys.modules, 'yacs.config')
    monkeypatch.delitem(sys.modules, 'yacs')  # the reader must not need (or import) yacs
    model = timm.create_model('resmlp_s12', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    _assert_official(model, 'resmlp_s12')
    assert 'yacs' not in sys.modules


def test_tags_listed_as_in_timm():
    ours = mlpvision.list_models(pretrained=True)
    theirs = [n for n in timm.list_models(pretrained=True) if mlpvision.is_model(n)]
    assert ours == sorted(theirs)
    direct = mlpvision.list_pretrained(direct=True)
    assert ours == direct  # every tag pretrained=True can download, and only those
    assert 'resmlp_s12.fb_in1k' in ours and 'hire_mlp_tiny.in1k' in ours and 'as_mlp_tiny.in1k' not in ours
    assert mlpvision.list_models('resmlp_s24', pretrained=True) == [
        'resmlp_s24.fb_dino', 'resmlp_s24.fb_distilled_in1k', 'resmlp_s24.fb_in1k']
    assert mlpvision.list_models('resmlp_s24') == ['resmlp_s24']
    manual = mlpvision.list_pretrained(direct=False)
    assert {mlpvision.model_family(n) for n in manual} == {'as_mlp', 'strip_mlp', 'repmlpnet', 'repmlp'}
    for name in direct + manual:
        w = mlpvision.pretrained_weights(name)
        cfg = timm.models.get_pretrained_cfg(name)
        assert w.page.startswith('https://') and w.license == cfg.license and '@' in w.source
        assert (cfg.url == w.page) if w.host == 'direct' else (w.host in ('Google Drive', 'OneDrive', 'Baidu')
                                                               and not cfg.has_weights)
        assert w.top1 is not None or 'no ' in w.top1_source  # a figure, or the reason there is none


@torch.no_grad()
def test_timm_hub_file_downloads_into_ours(server, cache):
    """timm's hub file for the same architecture (timm/resmlp_12_224.*: model.safetensors, timm's key names and
    (1, 1, C) Affines), made from timm's own resmlp_12_224 with the parity fill, downloaded as a safetensors URL:
    ours gives timm's logits."""
    from safetensors.torch import save

    from fill import fill_tensor
    theirs = timm.create_model('resmlp_12_224').eval()
    theirs.load_state_dict({k: fill_tensor(k, v.shape).reshape(v.shape) for k, v in theirs.state_dict().items()})
    server.files['model.safetensors'] = save(theirs.state_dict())
    x = make_input(0, (2, 3, 224, 224))
    ours = mlpvision.create_model('resmlp_s12', pretrained=True, deploy=True,
                                  pretrained_cfg_overlay=dict(url=f'{server.url}/ok/model.safetensors'))
    ref = theirs(x)
    assert (ours.eval()(x) - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert _cached(cache) == ['model.safetensors']


@pytest.mark.parametrize('tag, wrap', [('wave_mlp_t_dw.in1k', 'state_dict'), ('cycle_mlp_b1.in1k', 'model')])
def test_new_families_download_through_pretrained_true(server, cache, tag, wrap, monkeypatch):
    """Wave-MLP and CycleMLP releases (issue 29): the registered tag, its URL pointed at the local server, serving an
    official-format checkpoint made from the parity fixture (wrapped as their training scripts save it); the
    download is cached and reproduces the official logits."""
    import dataclasses
    name = tag.split('.')[0]
    filename = _registry._WEIGHTS[tag].page.rsplit("/", 1)[-1]
    server.files[filename] = _pth({wrap: fill_state_dict(parity_record(name)['schema'])})
    url = f'{server.url}/ok/{filename}'
    monkeypatch.setitem(_model_pretrained_cfgs, tag, dataclasses.replace(_model_pretrained_cfgs[tag], url=url))
    monkeypatch.setitem(_registry._WEIGHTS, tag, dataclasses.replace(_registry._WEIGHTS[tag], page=url))
    _assert_official(mlpvision.create_model(tag, pretrained=True), name)
    assert _cached(cache) == [filename]
