import json
import os
import sys
from functools import cache
from pathlib import Path

# Sleeping (not spinning) OpenMP threads: the suite starts subprocesses (DDP, kill-and-resume) that share 2 cores with
# this process, and spinning threads slow such runs down many times over. It must be set before torch is imported.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

FIXTURES = Path(__file__).parent / 'fixtures'
PARITY = FIXTURES / 'parity'
sys.path.insert(0, str(PARITY))


@cache
def parity_record(model_name: str) -> dict:
    return json.loads((PARITY / f'{model_name}.json').read_text())


def parity_models() -> list[str]:
    return sorted(p.stem for p in PARITY.glob('*.json'))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def on_meta(name: str, **kwargs) -> nn.Module:
    """Build on the meta device: shapes, parameter counts, MACs and input checks without memory or init cost."""
    import mlpvision
    with torch.device('meta'):
        return mlpvision.create_model(name, **kwargs)


def randomise_norm_stats(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (identities at init, which would hide a wrong fold)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=m.running_mean.dtype) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=m.running_var.dtype) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g, dtype=m.weight.dtype) + 0.5)
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=g, dtype=m.bias.dtype) * 0.1)


def is_heavy(name: str) -> bool:
    """The one rule for which registered variants run their real forward / backward checks only in the slow suite
    (``make test-slow``): more than 55M parameters and more than 5 GMACs, or more than 80M parameters (the official
    counts in ``mlpvision.model_meta``). On 2 cores such a variant takes several times the seconds of the small
    ones, and the default suite keeps at least one variant of every family and block type, which share all code with
    the heavy ones."""
    import mlpvision
    meta = mlpvision.model_meta(name)
    params, gmacs = meta.params or 0, meta.gmacs or meta.gmacs_paper or 0
    return (params > 55e6 and gmacs > 5) or params > 80e6


def by_weight(names, heavy=is_heavy) -> list:
    """``names`` as pytest params, the heavy ones marked slow."""
    return [pytest.param(n, marks=[pytest.mark.slow] if heavy(n) else []) for n in names]


@cache
def smallest_per_family(names: tuple[str, ...] | None = None) -> list[str]:
    """Among ``names`` (default: every registered model), the variant with the fewest parameters in each family
    (counted on the meta device)."""
    import mlpvision
    best: dict[str, tuple[int, str]] = {}
    for name in mlpvision.list_models() if names is None else names:
        n = mlpvision.count_params(on_meta(name))
        fam = mlpvision.model_family(name)
        if fam not in best or n < best[fam][0]:
            best[fam] = (n, name)
    return sorted(name for _, name in best.values())


def cli(capsys, *argv):
    """Run ``mlpvision ARGV`` in this process: (exit status, stdout, stderr); torch's thread count is restored (and
    validate / predict run on one thread)."""
    from mlpvision.cli.main import main
    threads = torch.get_num_threads()
    if argv[0] in ('validate', 'predict'):
        argv = (*argv, '--threads', '1')
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors (an unknown flag, a value outside a flag's choices)
        rc = e.code
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(rc, err, command, *fragments):
    """The CLI's contract for expected errors: exit status 2 and one line, ``mlpvision COMMAND: error: ...``."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'mlpvision {command}: error: '), err
    assert 'Traceback' not in err
    for f in fragments:
        assert f in lines[0], lines[0]
