"""One grammar (issue 26): every subcommand spells a concept the same way (`mlpvision.cli._common.CONCEPTS`), old
spellings still parse as aliases that say what replaces them, and WEIGHTS opens in all its forms in every command
that takes weights."""
from __future__ import annotations

import argparse

import pytest

from mlpvision.cli._common import CONCEPTS, Alias
from mlpvision.cli.main import build_parser


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _violations(parser: argparse.ArgumentParser) -> list[str]:
    spelling = {flag: name for name, c in CONCEPTS.items() for flag in (*c.flags, *c.aliases)}
    out = []
    for path, p in _parsers(parser):
        where = ' '.join(path) or 'mlpvision'
        for a in p._actions:
            for flag in a.option_strings:
                owner = spelling.get(flag)
                if owner is not None and a.dest != owner:
                    out.append(f'{where}: {flag} is the spelling of {owner!r}, used for {a.dest!r}')
            if a.dest not in CONCEPTS or not a.option_strings:
                continue
            c = CONCEPTS[a.dest]
            if isinstance(a, Alias):
                if not set(a.option_strings) <= set(c.aliases):
                    out.append(f'{where}: {a.option_strings} is not a listed old spelling of {a.dest!r}')
            elif {f for f in a.option_strings if not (isinstance(a, argparse.BooleanOptionalAction)
                                                       and f.startswith('--no-'))} != set(c.flags):
                out.append(f'{where}: {a.dest!r} spelled {a.option_strings}, not {list(c.flags)}')
            elif c.choices is not None and a.choices is not None and tuple(a.choices) != c.choices:
                out.append(f'{where}: {a.option_strings[-1]} choices {a.choices}, not {c.choices}')
            elif c.choices is not None and a.choices is None and a.nargs != 0:
                out.append(f'{where}: {a.option_strings[-1]} takes any string; its choices are {c.choices}')
    return out


def test_every_subcommand_follows_the_concept_table():
    assert _violations(build_parser()) == []


def test_the_grammar_test_catches_an_invented_spelling():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    new = sub.add_parser('new-command')
    new.add_argument('--out', dest='out')  # an old spelling reused for a new option
    new.add_argument('--output', dest='output')  # the concept without its short form
    new.add_argument('--amp', dest='amp')  # any string
    found = _violations(parser)
    assert len(found) == 3, found


@pytest.mark.parametrize('argv, dest, value', [
    (['bench', 'resmlp_12', '--out', 'D'], 'output', 'D'),
    (['bench', 'resmlp_12', '--dtype', 'bf16'], 'amp', 'bf16'),
    (['bench', 'resmlp_12', '--dtype', 'fp32'], 'amp', 'none'),
    (['bench', 'resmlp_12', '--reparam'], 'deploy', True),
    (['export', 'resmlp_12', '--format', 'onnx', '--out', 'f.onnx'], 'output', 'f.onnx'),
    (['validate', 'w.pth', '--reparam'], 'deploy', True),
    (['viz', 'weights', 'resmlp_12', '--layer', '2'], 'block', 2),
])
def test_old_spellings_still_parse_and_say_what_replaces_them(argv, dest, value, capsys):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert dest == 'block' or 'old spelling' in err


def test_amp_takes_only_its_choices(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(['validate', 'w.pth', '--amp', 'bfloat16'])
    assert "invalid choice: 'bfloat16'" in capsys.readouterr().err


def test_a_required_option_is_required_in_either_spelling(tmp_path, capsys):
    from mlpvision.cli.main import main

    assert main(['export', 'resmlp_12', '--format', 'onnx']) == 2
    assert 'required: -o/--output' in capsys.readouterr().err
