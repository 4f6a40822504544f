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


@cache
def smallest_per_family() -> list[str]:
    """The variant with the fewest parameters in each registered family (counted on the meta device)."""
    import mlpvision
    best: dict[str, tuple[int, str]] = {}
    for name in mlpvision.list_models():
        with torch.device('meta'):
            n = mlpvision.count_params(mlpvision.create_model(name))
        fam = mlpvision.model_family(name)
        if fam not in best or n < best[fam][0]:
            best[fam] = (n, name)
    return sorted(name for _, name in best.values())
