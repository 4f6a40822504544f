"""README.md and docs/ cannot rot: the README's Python examples run (on generated data, the pretrained download
served by a local HTTP server as in tests/test_pretrained.py), and the tables generated from the registry are
current (regenerate with ``python tests/doc_tables.py``)."""
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from timm.models._registry import _model_pretrained_cfgs

from doc_tables import blocks, doc_files, render
from mlpvision.models import _registry
from test_pretrained import _pth, _Server

from conftest import parity_record
from fill import fill_state_dict

README = Path(__file__).parents[1] / 'README.md'


def python_blocks(text: str) -> list[str]:
    return re.findall(r'^```python\n(.*?)^```', text, re.S | re.M)


def test_readme_has_the_examples_this_file_runs():
    code = python_blocks(README.read_text())
    assert len(code) == 2, 'a new ```python block in the README needs its data here'
    assert "create_model('resmlp_s12.fb_in1k', pretrained=True)" in code[0] and 'cat.jpg' in code[0]
    assert 'from mlpvision.dense import' in code[1]


@pytest.fixture
def served_resmlp(tmp_path, monkeypatch):
    """resmlp_s12.fb_in1k's registered cfg pointed at a local server holding an official-format file (the parity
    fixture's weights), an empty download cache, no Hugging Face Hub, and a generated cat.jpg in the working dir."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / 'cat.jpg')
    with _Server() as server:
        server.files['resmlp_12_no_dist.pth'] = _pth(fill_state_dict(parity_record('resmlp_s12')['schema']))
        url = f'{server.url}/ok/resmlp_12_no_dist.pth'
        key = 'resmlp_s12.fb_in1k'
        monkeypatch.setitem(_model_pretrained_cfgs, key, dataclasses.replace(_model_pretrained_cfgs[key], url=url))
        monkeypatch.setitem(_registry._WEIGHTS, key, dataclasses.replace(_registry._WEIGHTS[key], page=url))
        yield server


def test_readme_classify_example_runs(served_resmlp, capsys):
    exec(compile(python_blocks(README.read_text())[0], 'README.md', 'exec'), {})
    out = capsys.readouterr().out
    top5 = eval(out)  # the example prints [(ImageNet class description, probability), ...]
    assert len(top5) == 5 and all(isinstance(name, str) and 0 <= p <= 1 for name, p in top5)
    assert [p for _, p in top5] == sorted((p for _, p in top5), reverse=True)
    assert served_resmlp.requests == ['/ok/resmlp_12_no_dist.pth']  # downloaded from the local server, once
    assert (served_resmlp and Path('torch/hub/checkpoints/resmlp_12_no_dist.pth').is_file())


def test_readme_dense_example_runs(monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    ns = {}
    exec(compile(python_blocks(README.read_text())[1], 'README.md', 'exec'), ns)
    with torch.no_grad():
        maps = ns['b'].eval()(torch.randn(1, 3, 96, 128))
        assert [m.shape[-2:] for m in maps] == [(96 // s, 128 // s) for s in (4, 8, 16, 32)]
        assert ns['seg'].eval()(torch.randn(1, 3, 64, 96))['out'].shape == (1, 150, 64, 96)
    assert not (tmp_path / 'torch').exists()  # nothing downloaded


def test_generated_tables_are_current():
    """Every block between <!-- models:start --> / <!-- weights:start --> markers in README.md and docs/ is what the
    registry gives now."""
    from mlpvision.model_table import model_rows

    rows = model_rows()
    found = 0
    for path in doc_files():
        text = path.read_text()
        found += len(blocks(text))
        assert render(text, rows) == text, f'{path} is stale: run python tests/doc_tables.py'
    assert found >= 12  # docs/models.md, docs/weights.md and each family page's two
