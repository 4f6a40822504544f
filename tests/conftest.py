import json
import sys
from functools import cache
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / 'fixtures'
PARITY = FIXTURES / 'parity'
sys.path.insert(0, str(PARITY))

torch.set_num_threads(max(torch.get_num_threads(), 1))


@cache
def parity_record(model_name: str) -> dict:
    return json.loads((PARITY / f'{model_name}.json').read_text())


def parity_models() -> list[str]:
    return sorted(p.stem for p in PARITY.glob('*.json'))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
