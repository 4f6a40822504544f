"""The `mlpvision` console script: `models` and `demo` (training subcommands have their own tests)."""
import csv
import io

import pytest

from mlpvision.cli.main import main


def test_models_table(capsys):
    assert main(['models', 'resmlp_s1*']) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ['model', 'params', '(M)']
    assert 'resmlp_s12' in out and '15.35' in out and '3.01' in out and '76.60' in out


def test_models_csv_and_md(capsys):
    assert main(['models', 'resmlp_s12', '--format', 'csv']) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]['model'] == 'resmlp_s12' and rows[0]['params (M)'] == '15.35' and rows[0]['input'] == '224x224'
    assert main(['models', 'resmlp_s12', '--format', 'md']) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith('| model |') and md[2].startswith('| resmlp_s12 |')


def test_models_unknown_pattern_is_one_line_error(capsys):
    assert main(['models', 'nothing_like_this*']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'no mlpvision model matches' in err


def test_models_names_only(capsys):
    assert main(['models', 'resmlp_*', '--names-only']) == 0
    assert capsys.readouterr().out.split() == ['resmlp_b24', 'resmlp_b24_p8', 'resmlp_s12', 'resmlp_s24', 'resmlp_s36']


def test_unknown_subcommand_exits_2():
    with pytest.raises(SystemExit) as e:
        main(['frobnicate'])
    assert e.value.code == 2


def test_model_kwargs_have_one_syntax():
    """Every subcommand reads --model-kwargs with the same parser: pairs as separate arguments or joined by commas
    (a comma followed by KEY= starts a pair, so a tuple value keeps its commas), values as Python literals."""
    from mlpvision.cli._common import parse_model_kwargs
    from mlpvision.cli.main import build_parser
    from mlpvision.cli.train import overrides_from_args
    from mlpvision.errors import UsageError

    expected = {'embed_dim': 16, 'depth': 1, 'act_layer': 'gelu', 'layers': (2, 2, 6, 2), 'img_size': [32, 32],
                'lr': 1e-3, 'flag': True, 'norm': None, 'name': 'a,b=c'}
    spaced = ['embed_dim=16', 'depth=1', 'act-layer=gelu', 'layers=2,2,6,2', 'img_size=[32, 32]', 'lr=1e-3',
              'flag=true', 'norm=None', "name='a,b=c'"]
    joined = [','.join(spaced[:4]), ','.join(spaced[4:])]
    assert parse_model_kwargs(spaced) == parse_model_kwargs(joined) == expected
    assert parse_model_kwargs('depth=2, embed_dim=64') == {'depth': 2, 'embed_dim': 64}
    assert parse_model_kwargs(['{"img_size": [32, 32]}', 'depth=2']) == {'img_size': [32, 32], 'depth': 2}
    assert parse_model_kwargs(None) == parse_model_kwargs([]) == {}
    for bad, why in (('depth', 'key=value'), ('depth=', 'key=value'), ('=2', 'key=value'), ('2x=1', 'key=value'),
                     ('depth=1,depth=2', "'depth' twice"), ('{"depth": ', 'JSON')):
        with pytest.raises(UsageError, match=why):
            parse_model_kwargs([bad])

    parser = build_parser()
    argv = {'train': [], 'demo': [], 'validate': ['ckpt.pth'], 'predict': ['ckpt.pth', 'img.png'], 'bench': []}
    for command, positional in argv.items():
        args = parser.parse_args([command, *positional, '--model-kwargs', *joined])
        got = overrides_from_args(args)['model_kwargs'] if command in ('train', 'demo') else \
            parse_model_kwargs(args.model_kwargs)
        assert got == expected, command


def test_unexpected_errors_keep_their_traceback(monkeypatch, capsys):
    """Only mlpvision's own errors become one line (exit status 2); any other exception propagates with its
    traceback, here a ValueError mlpvision did not raise itself, and a RuntimeError in a real process (status 1)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import mlpvision.models
    from mlpvision.errors import UsageError

    def fail(exc):
        def raiser(*args, **kwargs):
            raise exc
        return raiser

    monkeypatch.setattr(mlpvision.models, 'list_models', fail(ValueError('boom')))
    with pytest.raises(ValueError, match='boom'):
        main(['models', '--names-only'])
    monkeypatch.setattr(mlpvision.models, 'list_models', fail(UsageError('bad input, and its fix')))
    assert main(['models', '--names-only']) == 2
    assert capsys.readouterr().err == 'mlpvision models: error: bad input, and its fix\n'

    code = ('import sys, mlpvision.models\n'
            'def boom(*args, **kwargs):\n'
            '    raise RuntimeError("boom")\n'
            'mlpvision.models.list_models = boom\n'
            'from mlpvision.cli.main import main\n'
            'sys.exit(main(["models", "--names-only"]))\n')
    src = Path(__file__).parents[1] / 'src'
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(src)))
    assert proc.returncode == 1, proc.stderr
    assert 'Traceback (most recent call last)' in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == 'RuntimeError: boom'
    assert 'mlpvision models: error' not in proc.stderr


def test_unknown_model_name_is_one_line(capsys, tmp_path):
    assert main(['validate', str(tmp_path / 'missing.pth'), '--model', 'resmlp_s13']) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlpvision validate: error: unknown model 'resmlp_s13'; closest: ") and err.count('\n') == 1
    assert 'resmlp_s12' in err.split('closest: ')[1]
