"""Write parity fixtures (tests/fixtures/parity/README.md) from an official model file, run in this process.

    benchmarks/export_official.sh CLONES_DIR      # the official model files, at the pinned commits
    python benchmarks/make_parity_fixture.py MODULE:FACTORY=NAME ... --official SOURCE [--sizes 224x224 192x256]

MODULE is a file in ``benchmarks/official/`` (``wave_mlp``), FACTORY its model function (``WaveMLP_T``), NAME the
mlpvision variant (``wave_mlp_t``); SOURCE the ``owner/repo@commit:file`` written into the fixture. The official model
is built through side_by_side.py's import shims, filled with ``fill.fill_state_dict`` of its own state_dict schema and
run in eval mode on ``fill.make_input(seed, (2, 3, H, W))`` for each size (seed 0 for the first, then 1, 2, ...). The
first size gives the fixture's ``input`` / ``logits``; the others go to ``more`` as ``{input, logits}`` records, and
``train_mode`` holds the official logits in train mode (BatchNorm on batch statistics) for the first input. Before
writing, the same weights are loaded into the mlpvision variant through ``create_model(checkpoint_path=...)`` and its
logits checked against the official ones (1e-4 of the largest logit), in train and deploy form.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / 'tests' / 'fixtures' / 'parity'


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('variants', nargs='+', help='MODULE:FACTORY=NAME')
    ap.add_argument('--official', required=True, help='owner/repo@commit:file, written into the fixture')
    ap.add_argument('--sizes', nargs='+', default=['224x224', '192x256'], help='HxW, the first one the main input')
    ap.add_argument('--official-dir', type=Path, default=ROOT / 'benchmarks' / 'official')
    args = ap.parse_args(argv)
    sys.path.insert(0, str(FIXTURES))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from side_by_side import _official_import_shims

    import mlpvision

    from fill import fill_state_dict, make_input

    sys.path.insert(0, str(args.official_dir))
    sizes = [tuple(int(v) for v in s.split('x')) for s in args.sizes]
    for spec in args.variants:
        where, name = spec.split('=')
        module, factory = where.split(':')
        with _official_import_shims():
            official = getattr(importlib.import_module(module), factory)().eval()
        schema = [[k, list(v.shape), str(v.dtype).removeprefix('torch.')] for k, v in official.state_dict().items()]
        sd = fill_state_dict(schema)
        official.load_state_dict(sd, strict=True)
        runs = []
        for seed, (h, w) in enumerate(sizes):
            shape = [2, 3, h, w]
            runs.append(({'seed': seed, 'shape': shape}, _logits(official, make_input(seed, shape))))
        # train mode (BatchNorm on batch statistics; no stochastic depth in the official defaults), first input
        trained = copy.deepcopy(official).train()
        with torch.no_grad():
            train_ref = trained(make_input(**runs[0][0]))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / 'official.pth'
            torch.save({'model': sd}, path)
            ours = mlpvision.create_model(name, checkpoint_path=path)
            for model, label in ((ours, 'train'), (mlpvision.reparameterize(ours), 'deploy')):
                for inp, ref in runs:
                    err = (_logits(model, make_input(**inp)) - ref).abs().max().item()
                    rel = err / ref.abs().max().item()
                    print(f'{name} {label} {inp["shape"][2]}x{inp["shape"][3]}: max |diff| / max |logit| {rel:.2e}')
                    assert rel <= 1e-4, f'{name} ({label}) does not reproduce the official logits'
            with torch.no_grad():
                err = (ours.train()(make_input(**runs[0][0])) - train_ref).abs().max().item()
            print(f'{name} train mode: max |diff| / max |logit| {err / train_ref.abs().max().item():.2e}')
        (inp0, ref0), more = runs[0], runs[1:]
        rec = {'model': name, 'official': args.official, 'official_variant': factory, 'num_classes': ref0.shape[1],
               'input': inp0, 'params': sum(p.numel() for p in official.parameters()), 'schema': schema,
               'logits': ref0.tolist(),
               'more': [{'input': inp, 'logits': ref.tolist()}
                        for inp, ref in more],
               'train_mode': {'input': inp0, 'logits': train_ref.tolist()}}
        (FIXTURES / f'{name}.json').write_text(json.dumps(rec, separators=(',', ':')))
        print(f'wrote {FIXTURES / (name + ".json")}')


if __name__ == '__main__':
    main()
