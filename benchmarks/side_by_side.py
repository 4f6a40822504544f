"""mlpvision against the official implementations, in one process (docs/benchmarks.md, "Side-by-side").

    benchmarks/export_official.sh CLONES_DIR          # the official model files, at the parity fixtures' commits
    python benchmarks/side_by_side.py FAMILY [--repeats 7] [--threads 2] [--batch 8] [--train]

FAMILY is one of resmlp, asmlp, hiremlp, stripmlp, repmlp (RepMLP-Res50), repmlpnet, wavemlp, cyclemlp. The official
model is built from ``benchmarks/official/`` (never committed), its parameter count and its logits are checked
against the parity fixture (``tests/fixtures/parity``, weights from ``fill.fill_state_dict``), the same weights are
loaded into mlpvision's model through ``create_model(checkpoint_path=...)`` and checked too (train and deploy form).
Then, in this process: eval mode, ``torch.inference_mode``, one random batch shared by every entry, ``--warmup``
untimed calls per entry, ``--repeats`` timed calls per entry interleaved (the entry order reversed on odd repeats).

Entries are named ``WHO_[deploy_][cl_]PRECISION``: WHO official or ours; ``deploy_`` the deploy form (ours where
re-parameterisation changes the structure; the official for RepMLPNet after its ``locality_injection()`` and
for RepMLP-Res50 after its ``repmlp_model_convert``); ``cl_`` model and input in channels-last memory format (checked
against the fixture in that format; an official model whose code refuses it is reported as refused and left out);
PRECISION fp32 or bf16 (autocast; ``--bf16 auto``, the default: only where oneDNN has bf16, AVX512 / AMX). The
official code gets every setting ours gets.

Printed: the host's GEMM peaks (:func:`mlpvision.bench.gemm_peaks`) and the torch / oneDNN versions, the refusals,
then per entry the median img/s, its ratio to the official fp32 entry ("ours at best vs official fp32" for our best
entry: it mixes our code with the precision) and, for our entries, its ratio to the official entry of the same
setting (:func:`same_setting`): ratio of medians and median of the per-repeat ratios. Last, ``like_with_like_fp32``
/ ``_bf16``: each side's fastest entry in that precision (any form and layout its code runs), and
``ours_at_best_vs_official_fp32``.

``--plain`` adds ours in fp32 without the oneDNN layer paths, ``--int8`` ours in int8
(:func:`mlpvision.quantize.quantize`, compiled; the fastest form on a CPU without bf16 GEMMs), ``--compile``
``torch.compile(dynamic=False)`` of the bf16 deploy form (minutes of compilation in the warm-up); these have no
official counterpart. ``--train`` times a training step instead (train mode: zero_grad, forward, cross-entropy,
backward; no optimizer step) in fp32 and bf16 autocast, contiguous, for the official model and ours.
``--profile ENTRY ...`` prints a torch.profiler table of those entries first.

Shims, applied in this harness and never in the official files: timm's ``register_model`` is the identity while
they are imported (their names would otherwise replace mlpvision's in timm's registry); the module
``timm.models.layers.helpers`` (gone from timm 1.0) is provided with ``to_2tuple``; ``cupy`` is an empty module and
AS-MLP's CUDA ``Shift.forward`` is replaced by the same file's ``torch_shift`` (numerically identical); CycleMLP's
torchvision ``deform_conv2d`` runs bf16 inputs in float32 (torchvision has no bf16 CPU kernel; without the shim the
official model raises under bf16 autocast).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
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
    'repmlp': ('repmlp_res50_light_224', lambda: importlib.import_module('repmlp_resnet').create_RepMLPRes50_Light_224(
        deploy=False)),
    'repmlpnet': ('repmlpnet_t224', lambda: importlib.import_module('repmlpnet').create_RepMLPNet_T224()),
    'wavemlp': ('wave_mlp_t', lambda: importlib.import_module('wave_mlp').WaveMLP_T()),
    'cyclemlp': ('cycle_mlp_b1', lambda: importlib.import_module('cycle_mlp').CycleMLP_B1()),
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
        if family == 'cyclemlp':
            cycle = importlib.import_module('cycle_mlp')
            cycle.deform_conv2d_tv = _deform_conv2d_fp32(cycle.deform_conv2d_tv)
        return FAMILIES[family][1]()


def _deform_conv2d_fp32(deform_conv2d: Callable) -> Callable:
    """torchvision's ``deform_conv2d`` with bf16 inputs computed in float32, as torchvision's autocast policy does on
    CUDA: its CPU kernel has no bf16 (``"deformable_im2col" not implemented for 'BFloat16'``), so under bf16 autocast
    the official CycleMLP raises without this. Float32 inputs pass through unchanged."""
    def run(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
            **kwargs: object) -> torch.Tensor:
        if input.dtype == torch.float32:
            return deform_conv2d(input, offset, weight, bias, **kwargs)
        with torch.autocast('cpu', enabled=False):
            return deform_conv2d(input.float(), offset.float(), weight.float(),
                                 None if bias is None else bias.float(), **kwargs)
    return run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('family', choices=list(FAMILIES))
    ap.add_argument('--repeats', type=int, default=7)
    ap.add_argument('--warmup', type=int, default=3, help='untimed calls per entry before the repeats')
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
    ap.add_argument('--no-channels-last', action='store_true',
                    help='leave out the channels-last entries (model and input in channels-last memory format; '
                         'inference only)')
    ap.add_argument('--profile', nargs='*', default=[], metavar='ENTRY',
                    help='print a torch.profiler table (3 calls, operators by self CPU time) of these entries '
                         '(labels as printed, e.g. official_bf16 ours_deploy_bf16) before the timed repeats')
    ap.add_argument('--profile-top', type=int, default=20, help='operators in each profile table')
    ap.add_argument('--official-dir', type=Path, default=ROOT / 'benchmarks' / 'official')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    fixtures = ROOT / 'tests' / 'fixtures' / 'parity'
    sys.path.insert(0, str(fixtures))
    import mlpvision
    from mlpvision.bench import BenchSettings, environment
    from mlpvision.layers.fast_linear import onednn_bf16_supported, set_onednn_linear

    from fill import fill_state_dict, make_input

    name = FAMILIES[args.family][0]
    rec = json.loads((fixtures / f'{name}.json').read_text())
    sd = fill_state_dict(rec['schema'])
    official = build_official(args.family, args.official_dir)
    n_params = sum(p.numel() for p in official.parameters())
    assert n_params == rec['params'], f'official {name}: {n_params} params, fixture {rec["params"]}'
    missing, unexpected = official.load_state_dict(sd, strict=False)
    # CycleMLP's fixed Cycle FC offsets are buffers the schema leaves out (the fixture's schema_note)
    assert not unexpected and all(k.endswith('.offset') for k in missing), (missing, unexpected)
    x_fixture, ref = make_input(**rec['input']), torch.tensor(rec['logits'])

    def check(model: torch.nn.Module, label: str, fmt: torch.memory_format = torch.contiguous_format) -> None:
        with torch.inference_mode():
            err = (model.eval()(x_fixture.contiguous(memory_format=fmt)) - ref).abs().max().item()
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

    has_bf16 = onednn_bf16_supported()
    bf16 = args.bf16 == 'on' or (args.bf16 == 'auto' and has_bf16)
    if not bf16:
        print(f'# no bf16 entries (--bf16 {args.bf16}; oneDNN has bf16 on this CPU: {has_bf16})')
    precisions = [('fp32', None)] + ([('bf16', torch.bfloat16)] if bf16 else [])
    official_forms = [('', official)]
    if args.family in ('repmlp', 'repmlpnet'):
        if args.family == 'repmlpnet':
            official_deploy = copy.deepcopy(official)
            official_deploy.locality_injection()
        else:  # every RepMLP block's and conv-BN's switch_to_deploy, on a copy
            official_deploy = importlib.import_module('repmlp').repmlp_model_convert(official, do_copy=True)
        check(official_deploy, 'official deploy form')
        official_forms.append(('deploy_', official_deploy))
    ours_forms = [('', ours)] + ([('deploy_', deploy)] if deploy is not None else [])
    layouts = ('',) if args.no_channels_last or args.train else ('', 'cl_')
    refused: dict[str, str] = {}

    def channels_last(model: torch.nn.Module, label: str) -> torch.nn.Module | None:
        """A channels-last copy of ``model``, checked against the fixture on a channels-last input; None (and the
        reason in ``refused``) where its code refuses that layout."""
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        try:
            check(model, label, torch.channels_last)
        except (RuntimeError, AssertionError) as e:
            refused[label] = f'{type(e).__name__}: {str(e).splitlines()[0][:150]}'
            return None
        return model

    entries: list[Entry] = []
    for who, forms in (('official', official_forms), ('ours', ours_forms)):
        for form, model in forms:
            for layout in layouts:
                m = model if not layout else channels_last(model, f'{who}_{form}cl')
                if m is None:
                    continue
                for prec, dtype in (precisions if not args.train or not form else []):
                    entries.append(Entry(f'{who}_{form}{layout}{prec}', m, dtype, bool(layout)))
    if not args.train:
        if args.int8:
            from mlpvision.quantize import quantize

            calib = torch.randn(32, *x_fixture.shape[1:], generator=torch.Generator().manual_seed(2))
            entries.append(Entry('ours_int8', quantize(ours, calib), None, False, extra=True))
        if args.plain:
            entries.append(Entry('ours_plain_fp32', ours, 'plain', False, extra=True))
        if args.compile:
            entries.append(Entry(f'ours_best_compiled_{"bf16" if bf16 else "fp32"}',
                                 torch.compile(deploy or ours, dynamic=False), torch.bfloat16 if bf16 else None,
                                 False, extra=True))

    x = torch.randn(args.batch, *x_fixture.shape[1:], generator=torch.Generator().manual_seed(0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, rec.get('num_classes', 1000), (args.batch,), generator=torch.Generator().manual_seed(1))

    def call(e: Entry) -> None:
        if e.dtype == 'plain':
            previous = set_onednn_linear(False)
            try:
                return call(Entry(e.label, e.model, None, e.channels_last))
            finally:
                set_onednn_linear(previous)
        autocast = torch.autocast('cpu', dtype=e.dtype) if e.dtype else contextlib.nullcontext()
        inp = x_cl if e.channels_last else x
        if args.train:
            e.model.train()
            e.model.zero_grad(set_to_none=True)
            with autocast:
                F.cross_entropy(e.model(inp), target).backward()
        else:
            with torch.inference_mode(), autocast:
                e.model.eval()(inp)

    for e in list(entries):
        try:
            for _ in range(args.warmup):
                call(e)
        except RuntimeError as err:  # e.g. an official model that refuses bf16 under autocast
            refused[e.label] = f'{type(err).__name__}: {str(err).splitlines()[0][:150]}'
            entries.remove(e)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for e in entries:
            if e.label in args.profile:
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(3):
                        call(e)
                print(f'# profile of {e.label}: 3 calls, operators by self CPU time')
                print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=args.profile_top,
                                                max_name_column_width=60))
    rates: dict[str, list[float]] = {e.label: [] for e in entries}
    loads = []
    for r in range(args.repeats):
        for e in (entries if r % 2 == 0 else entries[::-1]):
            t = time.perf_counter()
            call(e)
            rates[e.label].append(args.batch / (time.perf_counter() - t))
        loads.append(os.getloadavg()[0])

    env = environment(BenchSettings(threads=args.threads))
    print(f'# {args.family} ({name}), {"training step" if args.train else "inference"}, batch {args.batch}, '
          f'{x.shape[2]}x{x.shape[3]}, {args.threads} threads, {args.repeats} repeats, '
          f'1-min load {min(loads):.2f}-{max(loads):.2f}')
    print(f"# torch {env['torch']}, oneDNN {env.get('onednn', '?')}, MKL {env.get('mkl', '?')}, "
          f"timm {env['timm']}, {env['cpu']} ({env['cpu_isa']}); host GEMM peaks: {env.get('gemm_peaks', '?')}")
    for label, why in refused.items():
        print(f'# refused: {label}: {why}')
    print('entry,median_img_s,min,max,vs_official_fp32:ratio_of_medians,vs_official_fp32:median_paired_ratio,'
          'same_setting_official,vs_same_setting:ratio_of_medians,vs_same_setting:median_paired_ratio')

    def ratios(a: str, b: str) -> tuple[float, float]:
        paired = statistics.median(p / q for p, q in zip(rates[a], rates[b], strict=True))
        return statistics.median(rates[a]) / statistics.median(rates[b]), paired

    for e in entries:
        v = rates[e.label]
        row = f'{args.family}:{e.label},{statistics.median(v):.2f},{min(v):.2f},{max(v):.2f},'
        row += '{:.3f},{:.3f}'.format(*ratios(e.label, 'official_fp32'))
        same = None if e.label.startswith('official') or e.extra else same_setting(e.label, rates)
        row += f',{same or ""},' + ('{:.3f},{:.3f}'.format(*ratios(e.label, same)) if same else ',')
        print(row)
    # like with like per precision: each side's fastest entry in that precision (any form, any layout it runs in)
    best = {}
    for prec, _ in precisions:
        for who in ('official', 'ours'):
            found = [e.label for e in entries if e.label.startswith(who) and e.label.endswith(prec) and not e.extra]
            best[who, prec] = max(found, key=lambda k: statistics.median(rates[k]))
        a, b = best['ours', prec], best['official', prec]
        print(f'{args.family}:like_with_like_{prec},{a} / {b},' + '{:.3f},{:.3f}'.format(*ratios(a, b)))
    a = max((e.label for e in entries if e.label.startswith('ours')), key=lambda k: statistics.median(rates[k]))
    print(f'{args.family}:ours_at_best_vs_official_fp32,{a} / official_fp32,'
          + '{:.3f},{:.3f}'.format(*ratios(a, 'official_fp32')))


@dataclasses.dataclass
class Entry:
    label: str  # who_[deploy_][cl_]precision
    model: torch.nn.Module
    dtype: torch.dtype | str | None  # autocast dtype, None for fp32, 'plain' for ours without the oneDNN paths
    channels_last: bool
    extra: bool = False  # an entry with no official counterpart (--int8, --plain, --compile)


def same_setting(label: str, rates: dict[str, list[float]]) -> str | None:
    """The official entry in the setting of our entry ``label``: the same precision and layout, its deploy form where
    ours is in deploy form and the official code has one (else its only form); contiguous where the official code
    refused channels-last; None where it has no entry in that precision."""
    rest = label.split('_', 1)[1]
    deploy = rest.startswith('deploy_')
    rest = rest.removeprefix('deploy_')
    forms = ['deploy_', ''] if deploy else ['']
    candidates = [f'official_{form}{layout}' for form in forms for layout in (rest, rest.removeprefix('cl_'))]
    return next((c for c in candidates if c in rates), None)


if __name__ == '__main__':
    main()
