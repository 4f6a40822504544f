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


def test_readme_model_table_is_current():
    """The README's model table is generated from the registry; regenerate with `mlpvision models --format md`."""
    from pathlib import Path

    from mlpvision.model_table import format_rows, model_rows
    readme = (Path(__file__).parents[1] / 'README.md').read_text()
    start = readme.index('\n', readme.index('<!-- models:start')) + 1
    table = readme[start:readme.index('<!-- models:end -->')]
    assert table == format_rows(model_rows(), 'md')
