"""``mlpvision models --dense``: the dense models' parameter counts (meta device) beside the official dense configs."""
from conftest import assert_one_error_line, cli


def test_models_dense_lists_upernet_with_the_official_figures(capsys):
    rc, out, err = cli(capsys, 'models', '--dense', 'upernet:as_mlp_tiny', '--format', 'csv')
    assert rc == 0, err
    header, row = out.strip().splitlines()
    assert header.startswith('head,backbone,classes,params (M),GMACs,at')
    # 59,936,204 params and 936.3 GMACs (no aux head) against the README's 60M / 937 G (tests/test_segmentation.py)
    assert row.split(',')[:8] == ['upernet', 'as_mlp_tiny', '150', '59.94', '936.3', '512x2048', '60M',
                                  '937 at 512x2048']


def test_models_dense_covers_every_family_under_each_head():
    from mlpvision.dense.table import DENSE_CONFIGS

    heads = {}
    for c in DENSE_CONFIGS:
        heads.setdefault(c.backbone.split('_')[0], set()).add(c.head)
    assert set(heads) == {'as', 'hire', 'strip', 'repmlpnet', 'repmlp', 'resmlp', 'wave'}
    assert all(h == {'upernet', 'maskrcnn', 'retinanet'} for h in heads.values()), heads


def test_models_dense_unknown_pattern_is_one_line(capsys):
    rc, _, err = cli(capsys, 'models', '--dense', 'deeplab:*')
    assert_one_error_line(rc, err, 'models', "'deeplab:*'", 'upernet:*')
