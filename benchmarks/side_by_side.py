"""mlpvision against the official implementations, in one process (docs/benchmarks.md, "Side-by-side").

    benchmarks/export_official.sh CLONES_DIR          # the official model files, at the parity fixtures' commits
    python benchmarks/side_by_side.py FAMILY [--repeats 7] [--threads 2] [--batch 8] [--img-size 224]

FAMILY is one of resmlp, asmlp, hiremlp, stripmlp, repmlpnet, wavemlp. The official model is built from
``benchmarks/official/`` (never committed), its parameter count and its logits are checked against the parity
fixture (``tests/fixtures/parity``, weights from ``fill.fill_state_dict``), the same weights are loaded into
mlpvision's model through ``create_model(checkpoint_path=...)`` and checked too (train and deploy form). Then, in
this process: eval mode, ``torch.inference_mode``, one random batch shared by every entry, 3 untimed calls per entry,
``--repeats`` timed calls per entry interleaved (the entry order reversed on odd repeats). Printed: the host's GEMM
peaks (:func:`mlpvision.bench.gemm_peaks`) and the torch / oneDNN versions, then per entry the median img/s and
its ratio to the official fp32 entry (ratio of medians and median of the per-repeat ratios).

Entries: official fp32 (and the official deploy form for RepMLPNet, after its ``locality_injection()``); ours fp32,
ours fp32 deploy form (where the family has one), ours bf16 autocast, ours bf16 deploy form (``--bf16 auto``, the
default: only where oneDNN has bf16, AVX512 / AMX); ``--plain`` adds ours in fp32 without the oneDNN layer paths,
``--int8`` ours in int8 (:func:`mlpvision.quantize.quantize`, compiled; the fastest form on a CPU without bf16
GEMMs), ``--compile`` ``torch.compile(dynamic=False)`` of the bf16 deploy form (minutes of compilation in the
warm-up). ``--train`` times a training step instead (train mode: zero_grad, forward, cross-entropy, backward; no
optimizer step; fp32), for the official model and ours.

Shims, applied in this harness and never in the official files: timm's ``register_model`` is the identity while
they are imported (their names would otherwise replace mlpvision's in timm's registry); the module
``timm.models.layers.helpers`` (gone from timm 1.0) is provided with ``to_2tuple``; ``cupy`` is an empty module and
AS-MLP's CUDA ``Shift.forward`` is replaced by the same file's ``torch_shift`` (numerically identical).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {  # family -> (mlpvision name, official constructor as the official README / configs build it)
    'resmlp': ('resmlp_s12', lambda: importlib.import_module('resmlp_models').resmlp_12()),
    'asmlp': ('as_mlp_tiny', lambda: importlib.import_module('asmlp.as_mlp').AS_MLP(
        embed_dim=96, depths=[2, 2, 6, 2], shift_size=5)),
    'hiremlp': ('hire_mlp_tiny', lambda: importlib.import_module('hire_mlp').hire_mlp_tiny()),
    'stripmlp': ('strip_mlp_tiny_light', lambda: importlib.import_module('strip_mlp').StripMLPNet(
        embed_dim=80, layers=[2, 2, 6, 2], alpha=3)),
    'repmlpnet': ('repmlpnet_t224', lambda: importlib.import_module('repmlpnet').create_RepMLPNet_T224()),
    'wavemlp': ('wave_mlp_t', lambda: importlib.import_module('wave_mlp').WaveMLP_T()),
}


@contextlib.contextmanager
def _official_import_shims():
    import timm.layers
    import timm.models
    import timm.models.registry as registry
    saved = timm.models.register_model, registry.register_model
    timm.models.register_model = registry.register_model = lambda fn: fn
    helpers = types.ModuleType('timm.models.layers.helpers')
    helpers.to_2tuple = timm.layers.to_2tuple
    sys.modules['timm.models.layers.helpers'] = helpers
    cupy = sys.modules.setdefault('cupy', types.ModuleType('cupy'))
    cupy._util = types.SimpleNamespace(memoize=lambda **kw: (lambda fn: fn))
    try:
        yield
    finally:
        timm.models.register_model, registry.register_model = saved


def build_official(family: str, official_dir: Path) -> torch.nn.Module:
    sys.path.insert(0, str(official_dir))
    with _official_import_shims():
        if family == 'asmlp':
            shift = importlib.import_module('asmlp.shift_cuda')
            shift.Shift.forward = lambda self, x: x if self.kernel_size == 1 else shift.torch_shift(
                x, self.kernel_size, self.dim)
        return FAMILIES[family][1]()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('family', choices=list(FAMILIES))
    ap.add_argument('--repeats', type=int, default=7)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--train', action='store_true', help='time a training step (fp32) instead of inference')
    ap.add_argument('--bf16', choices=('auto', 'on', 'off'), default='auto',
                    help='bf16 autocast entries: auto = where oneDNN has bf16 (AVX512 / AMX; on an AVX2-only CPU '
                         "bf16 runs in fallback kernels several times slower than fp32)")
    ap.add_argument('--compile', action='store_true', help='add torch.compile(dynamic=False) of the bf16 deploy form')
    ap.add_argument('--int8', action='store_true',
                    help='add ours in int8 (mlpvision.quantize of the deploy form, 32 random calibration images, '
                         'compiled; not Strip-MLP): the fastest form on a CPU without bf16 GEMMs')
    ap.add_argument('--plain', action='store_true',
                    help="add ours in fp32 without the oneDNN layer paths (set_onednn_linear(False))")
    ap.add_argument('--official-dir', type=Path, default=ROOT / 'benchmarks' / 'official')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    fixtures = ROOT / 'tests' / 'fixtures' / 'parity'
    sys.path.insert(0, str(fixtures))
    import mlpvision
    from mlpvision.bench import BenchSettings, environment

    from fill import fill_state_dict, make_input

    name = FAMILIES[args.family][0]
    rec = json.loads((fixtures / f'{name}.json').read_text())
    sd = fill_state_dict(rec['schema'])
    official = build_official(args.family, args.official_dir)
    n_params = sum(p.numel() for p in official.parameters())
    assert n_params == rec['params'], f'official {name}: {n_params} params, fixture {rec["params"]}'
    official.load_state_dict(sd, strict=True)
    x_fixture, ref = make_input(**rec['input']), torch.tensor(rec['logits'])

    def check(model: torch.nn.Module, label: str) -> None:
        with torch.inference_mode():
            err = (model.eval()(x_fixture) - ref).abs().max().item()
        assert err <= 1e-4 * ref.abs().max().item(), f'{label}: max |diff| {err:.3g} from the official logits'

    check(official, 'official')
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'official.pth'
        torch.save({'model': sd}, path)
        ours = mlpvision.create_model(name, checkpoint_path=path)
        check(ours, 'mlpvision')
        # a deploy form exists where re-parameterisation changes the structure (not AS-MLP's, not Strip-MLP's)
        deploy = mlpvision.reparameterize(ours)
        before, after = ours.state_dict(), deploy.state_dict()
        if before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before):
            deploy = None
        else:
            check(deploy, 'mlpvision deploy form')

    entries: list[tuple[str, torch.nn.Module, torch.dtype | str | None]] = [('official_fp32', official, None)]
    if args.train:
        entries.append(('ours_fp32', ours, None))
    else:
        if args.family == 'repmlpnet':
            official_deploy = copy.deepcopy(official)
            official_deploy.locality_injection()
            check(official_deploy, 'official deploy form')
            entries.append(('official_deploy_fp32', official_deploy, None))
        entries.append(('ours_fp32', ours, None))
        if deploy is not None:
            entries.append(('ours_deploy_fp32', deploy, None))
        from mlpvision.layers.fast_linear import onednn_bf16_supported

        has_bf16 = onednn_bf16_supported()
        bf16 = args.bf16 == 'on' or (args.bf16 == 'auto' and has_bf16)
        if bf16:
            entries.append(('ours_bf16', ours, torch.bfloat16))
            if deploy is not None:
                entries.append(('ours_deploy_bf16', deploy, torch.bfloat16))
        else:
            print(f'# no bf16 entries (--bf16 {args.bf16}; oneDNN has bf16 on this CPU: {has_bf16})')
        if args.int8:
            from mlpvision.quantize import quantize

            calib = torch.randn(32, *x_fixture.shape[1:], generator=torch.Generator().manual_seed(2))
            entries.append(('ours_int8', quantize(ours, calib), None))
        if args.plain:
            entries.append(('ours_plain_fp32', ours, 'plain'))
        if args.compile:
            entries.append((f'ours_best_compiled_{"bf16" if bf16 else "fp32"}',
                            torch.compile(deploy or ours, dynamic=False), torch.bfloat16 if bf16 else None))

    x = torch.randn(args.batch, *x_fixture.shape[1:], generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, rec.get('num_classes', 1000), (args.batch,), generator=torch.Generator().manual_seed(1))

    from mlpvision.layers.fast_linear import set_onednn_linear

    def call(model: torch.nn.Module, dtype: torch.dtype | str | None) -> None:
        if dtype == 'plain':
            previous = set_onednn_linear(False)
            try:
                return call(model, None)
            finally:
                set_onednn_linear(previous)
        autocast = torch.autocast('cpu', dtype=dtype) if dtype else contextlib.nullcontext()
        if args.train:
            model.train()
            model.zero_grad(set_to_none=True)
            with autocast:
                F.cross_entropy(model(x), target).backward()
        else:
            with torch.inference_mode(), autocast:
                model.eval()(x)

    for _, model, dtype in entries:
        for _ in range(3):
            call(model, dtype)
    rates: dict[str, list[float]] = {label: [] for label, _, _ in entries}
    loads = []
    for r in range(args.repeats):
        for label, model, dtype in (entries if r % 2 == 0 else entries[::-1]):
            t = time.perf_counter()
            call(model, dtype)
            rates[label].append(args.batch / (time.perf_counter() - t))
        loads.append(os.getloadavg()[0])

    env = environment(BenchSettings(threads=args.threads))
    print(f'# {args.family} ({name}), {"training step" if args.train else "inference"}, batch {args.batch}, '
          f'{args.threads} threads, {args.repeats} repeats, 1-min load {min(loads):.2f}-{max(loads):.2f}')
    print(f"# torch {env['torch']}, oneDNN {env.get('onednn', '?')}, MKL {env.get('mkl', '?')}, "
          f"timm {env['timm']}, {env['cpu']} ({env['cpu_isa']}); host GEMM peaks: {env.get('gemm_peaks', '?')}")
    print('entry,median_img_s,min,max,ratio_of_medians,median_paired_ratio')
    base = rates['official_fp32']
    for label, v in rates.items():
        paired = statistics.median(a / b for a, b in zip(v, base, strict=True))
        print(f'{args.family}:{label},{statistics.median(v):.2f},{min(v):.2f},{max(v):.2f},'
              f'{statistics.median(v) / statistics.median(base):.3f},{paired:.3f}')


if __name__ == '__main__':
    main()
