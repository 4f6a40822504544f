"""Export a model to ONNX, a ``torch.export`` program (``.pt2``) or an AOTInductor package, checked before writing.

Every export is run, from the written file, in the runtime that will serve it (onnxruntime, the loaded
``ExportedProgram``, the loaded AOTInductor package) and compared with the eager model: at two batch sizes other than
the example's when the batch is dynamic, and at several input sizes when H and W are (the example's, a larger
non-square one, a smaller odd one and the smallest size the graph serves, each where the model takes it). The figure
is the largest absolute difference relative to the largest absolute eager logit; above ``tolerance`` (1e-4) the
export fails with :class:`ExportError` and nothing is written (the file is written under a temporary name beside
``out`` and renamed only once it passed).

Captures, and which one each format uses:

* ``torch.export`` (non-strict) for ``pt2``, ``aoti`` and the default ONNX exporter (``torch.onnx.export(dynamo=True)``,
  which translates the exported program). A dynamic H / W is given as ``Dim.AUTO``: ``torch.export`` works out the
  range of sizes the graph is valid for (its 0/1 specialisation makes every feature map at least 2 long: 64 px for
  AS-MLP; Hire-MLP-Tiny 67 px for ``pt2``, where every stage also needs two regions, 35 px in the ONNX exporter's own
  call) and the program refuses sizes outside it (and AS-MLP's non-multiples of 32) with an error; that range is
  reported. The
  batch is ``Dim('batch', min=1)``: the graphs hold for batch 1 too, and the example has batch 2, since an example of
  batch 1 lets the capture treat the batch as a constant 1 (Strip-MLP's dynamo export failed at batch 2 that way).
* ``torch.jit.trace`` for the legacy ONNX exporter (``onnx_exporter='legacy'``, ``dynamo=False``): no size range, the
  graph holds the shape arithmetic it traced. It exports in a second instead of tens of seconds, and its Hire-MLP graph
  serves inputs from 3 px up (the torch.export one from 67 px), but PyTorch deprecates it, so it is not the default.

ONNX exporter per family (the default, :data:`ONNX_EXPORTERS`): ``dynamo`` for every family. Both exporters give
outputs within 1e-6 of the largest logit for every family in train and deploy form after the fixes of issue 15 (AS-MLP's
channel groups, Hire-MLP's region padding, the oneDNN fast paths under tracing; docs/export.md has the figures).

The model's oneDNN fast paths (:mod:`mlpvision.layers.fast_linear`) are left out of every captured graph, which holds
plain aten ops; its values equal the eager model's up to float rounding.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .errors import MlpvisionError, UsageError

__all__ = ['export_model', 'load_model', 'ExportError', 'ExportResult', 'ExportCheck', 'FORMATS', 'ONNX_EXPORTERS',
           'TOLERANCE']

_logger = logging.getLogger('mlpvision.export')

FORMATS = ('onnx', 'pt2', 'aoti')
_SUFFIXES = {'onnx': '.onnx', 'pt2': '.pt2', 'aoti': '.pt2'}
# family -> default ONNX exporter; 'dynamo' (torch.export based) wherever it works, which is every family now
ONNX_EXPORTERS = {'as_mlp': 'dynamo', 'cycle_mlp': 'dynamo', 'hire_mlp': 'dynamo', 'strip_mlp': 'dynamo',
                  'repmlp': 'dynamo', 'repmlpnet': 'dynamo', 'resmlp': 'dynamo', 'wave_mlp': 'dynamo'}
ONNX_OPSET = 18  # the dynamo exporter's default opset in torch 2.x; the legacy exporter takes it too
TOLERANCE = 1e-4  # max |exported - eager| / max |eager|, issue 15
_EXAMPLE_BATCH = 2  # a dynamic batch is captured from batch 2: an example of batch 1 lets a graph specialise to it
_CHECK_BATCHES = (1, 3)  # neither is the example's


class ExportError(MlpvisionError):
    """An export that could not be made, or that does not reproduce the model (nothing was written)."""


@dataclass(frozen=True)
class ExportCheck:
    """One comparison with eager: the input's batch and (H, W), and max |exported - eager| / max |eager|."""
    batch: int
    size: tuple[int, int]
    rel_diff: float


@dataclass
class ExportResult:
    path: Path
    format: str
    exporter: str  # 'torch.export', 'AOTInductor' (after torch.export), 'dynamo' or 'legacy' (ONNX)
    example_shape: tuple[int, ...]
    dynamic_batch: bool
    dynamic_size: bool
    size_range: dict[str, tuple[int, int | None]] | None  # torch.export's range per dynamic dim (max None: no bound)
    checks: list[ExportCheck] = field(default_factory=list)
    seconds: float = 0.

    @property
    def max_rel_diff(self) -> float:
        return max(c.rel_diff for c in self.checks)


def load_model(name: str, checkpoint: str | os.PathLike | None = None, deploy: bool = False,
               model_kwargs: dict | None = None) -> tuple[nn.Module, str, tuple[int, int] | None]:
    """The model to export: (model in eval mode, its registered name, the input size it was trained or built for).

    Args:
        name: WEIGHTS (:func:`mlpvision.engine.loading.open_weights`: a model name, ``name.tag``, a checkpoint file
            or a convert folder); with ``checkpoint``, the model name of that file (an official one needs it).
        checkpoint: a checkpoint file for ``name`` (the older spelling of passing the file as WEIGHTS).
        deploy: export the re-parameterised inference form (a train-form checkpoint is folded after loading).
    """
    from .engine.loading import open_weights, require_task

    if checkpoint is not None:
        loaded = open_weights(checkpoint, model=name, model_kwargs=model_kwargs, deploy=deploy)
    else:
        loaded = open_weights(name, model_kwargs=model_kwargs, deploy=deploy)
    require_task(loaded, 'classification', 'export')
    size = tuple(loaded.data_cfg.input_size[1:]) if loaded.kind in ('file', 'folder') else None
    return loaded.model.eval(), loaded.name, size


def _native_size(model: nn.Module) -> tuple[int, int]:
    img_size = getattr(model, 'img_size', None)
    if img_size is not None:
        return tuple(img_size)
    return tuple((getattr(model, 'pretrained_cfg', None) or {}).get('input_size', (3, 224, 224))[1:])


def _takes_any_size(model: nn.Module) -> bool:
    return not (getattr(model, 'pretrained_cfg', None) or {}).get('fixed_input_size', True)


def _family(model: nn.Module) -> str:
    from .models import is_model, model_family
    from .models._base import model_name

    name = model_name(model)
    return model_family(name) if is_model(name) else ''


def _rel_diff(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))


# --- capture ------------------------------------------------------------------------------------------------------

def _dynamic_shapes(dynamic_batch: bool, dynamic_size: bool) -> tuple[dict, ...] | None:
    if not (dynamic_batch or dynamic_size):
        return None
    dims: dict = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim('batch', min=1)
    if dynamic_size:
        dims[2] = dims[3] = torch.export.Dim.AUTO
    return (dims,)


def _size_range(program: torch.export.ExportedProgram, dynamic_batch: bool,
                dynamic_size: bool) -> dict[str, tuple[int, int | None]]:
    """The range torch.export found for each dynamic input dim (its guards; the program checks them on every call)."""
    from torch.utils._sympy.numbers import IntInfinity

    user_inputs = set(program.graph_signature.user_inputs)
    node = next(n for n in program.graph.nodes if n.op == 'placeholder' and n.name in user_inputs)
    shape = node.meta['val'].shape
    out = {}
    for axis, label in ((0, 'batch'), (2, 'height'), (3, 'width')):
        if (axis == 0 and not dynamic_batch) or (axis > 0 and not dynamic_size):
            continue
        size = shape[axis]
        if isinstance(size, int):  # specialised to the example's
            out[label] = (size, size)
            continue
        vr = program.range_constraints.get(size.node.expr)
        lo = int(vr.lower) if vr is not None else 1
        hi = None if vr is None or isinstance(vr.upper, IntInfinity) else int(vr.upper)
        out[label] = (lo, hi)
    return out


def _write(model: nn.Module, example: torch.Tensor, fmt: str, exporter: str, tmp: str, dynamic_batch: bool,
           dynamic_size: bool, opset: int) -> dict | None:
    """Capture ``model`` and write it to ``tmp``; returns the torch.export size range (None for the legacy exporter)."""
    dynamic = _dynamic_shapes(dynamic_batch, dynamic_size)
    with warnings.catch_warnings():
        # TracerWarnings for every shape the capture turns into a constant, the legacy exporter's deprecation: about
        # code paths the verification covers, and they would bury the report
        warnings.simplefilter('ignore')
        if fmt == 'onnx' and exporter == 'legacy':
            axes = ({0: 'batch'} if dynamic_batch else {}) | ({2: 'height', 3: 'width'} if dynamic_size else {})
            torch.onnx.export(model, (example,), tmp, dynamo=False, opset_version=opset, input_names=['input'],
                              output_names=['logits'],
                              dynamic_axes={'input': axes, 'logits': {0: 'batch'} if dynamic_batch else {}})
            return None
        if fmt == 'onnx':
            program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
                                        input_names=['input'], output_names=['logits'], verbose=False)
            program.save(tmp)
            return _size_range(program.exported_program, dynamic_batch, dynamic_size)
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
        size_range = _size_range(program, dynamic_batch, dynamic_size)
        if fmt == 'pt2':
            torch.export.save(program, tmp)
        else:
            torch._inductor.aoti_compile_and_package(program, package_path=tmp)
        return size_range


def _runner(fmt: str, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The written file, loaded the way a user would load it."""
    if fmt == 'onnx':
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: the optimiser's notes on nodes it cannot constant-fold
        session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if fmt == 'pt2':
        module = torch.export.load(path).module()
        return lambda x: module(x)
    package = torch._inductor.aoti_load_package(path)
    return lambda x: package(x)


def _check_sizes(native: tuple[int, int], dynamic_size: bool,
                 size_range: dict | None) -> list[tuple[int, int]]:
    """The (H, W) to compare at: the example's; with a dynamic size also a larger non-square one, a smaller odd one
    and the smallest the graph serves (each is used only where the eager model takes it)."""
    h, w = native
    if not dynamic_size:
        return [native]
    sizes = [native, (h + 32, w + 64), (h // 2 + 3, w // 2 + 5)]
    if size_range and 'height' in size_range:
        sizes.append((size_range['height'][0], size_range['width'][0]))
    out = []
    for s in sizes:
        if s in out or min(s) < 1:
            continue
        if size_range and 'height' in size_range:
            (hlo, hhi), (wlo, whi) = size_range['height'], size_range['width']
            if not (hlo <= s[0] and (hhi is None or s[0] <= hhi) and wlo <= s[1] and (whi is None or s[1] <= whi)):
                continue
        out.append(s)
    return out


def _verify(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], in_chans: int,
            sizes: Sequence[tuple[int, int]], batches: Sequence[int], tolerance: float) -> list[ExportCheck]:
    gen = torch.Generator().manual_seed(0)
    checks = []
    for size in sizes:
        for b in batches:
            x = torch.randn(b, in_chans, *size, generator=gen)
            try:
                with torch.no_grad():
                    ref = model(x)
            except ValueError:  # a size the model does not take (AS-MLP: multiples of 32): nothing to compare
                if size == sizes[0]:
                    raise
                break
            try:
                with torch.no_grad():
                    y = run(x)
            except Exception as e:  # any failure of the runtime on an input the model takes is the export's failure
                raise ExportError(f'the exported graph fails on an input the model takes (batch {b}, '
                                  f'{size[0]}x{size[1]}): {type(e).__name__}: {str(e).strip().splitlines()[0]}; '
                                  f'nothing was written') from None
            if tuple(y.shape) != tuple(ref.shape):
                raise ExportError(f'the exported graph returns shape {tuple(y.shape)} for batch {b}, '
                                  f'{size[0]}x{size[1]} where the model returns {tuple(ref.shape)}; nothing was '
                                  f'written')
            checks.append(ExportCheck(b, size, _rel_diff(y, ref)))
            if checks[-1].rel_diff > tolerance:
                raise ExportError(
                    f'the exported graph differs from the model by {checks[-1].rel_diff:.2e} of the largest logit at '
                    f'batch {b}, {size[0]}x{size[1]} (tolerance {tolerance:g}); nothing was written')
    return checks


def export_model(
        model: nn.Module,
        out: str | os.PathLike,
        format: str = 'onnx',
        dynamic_batch: bool = False,
        dynamic_size: bool = False,
        input_size: tuple[int, int] | None = None,
        onnx_exporter: str | None = None,
        opset: int = ONNX_OPSET,
        tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export ``model`` (eval mode) to ``out`` in ``format``, verified against the eager model before it is written.

    Args:
        format: 'onnx', 'pt2' (a ``torch.export`` program: ``torch.export.load(out).module()``) or 'aoti' (an
            AOTInductor package compiled for this machine's CPU: ``torch._inductor.aoti_load_package(out)``; needs a
            C++ compiler and takes minutes).
        dynamic_batch: any batch size (the example has batch 2; checked at batches 1 and 3). Else batch 1.
        dynamic_size: any height and width the graph serves (AS-MLP and Hire-MLP; the fixed-size families refuse).
        input_size: (H, W) of the example; default the model's (its ``img_size`` or its cfg's input size).
        onnx_exporter: 'dynamo' or 'legacy'; default the family's (:data:`ONNX_EXPORTERS`).
        tolerance: the largest difference accepted, relative to the largest logit.

    Raises:
        UsageError: a bad format, exporter or size option, or a missing runtime package.
        ExportError: the export failed or does not reproduce the model; ``out`` was not touched.
    """
    if format not in FORMATS:
        raise UsageError(f'format must be one of {", ".join(FORMATS)}, got {format!r}')
    family = _family(model)
    exporter = 'torch.export' if format == 'pt2' else 'AOTInductor' if format == 'aoti' else \
        onnx_exporter or ONNX_EXPORTERS.get(family, 'dynamo')
    if format == 'onnx' and exporter not in ('dynamo', 'legacy'):
        raise UsageError(f"onnx_exporter must be 'dynamo' or 'legacy', got {exporter!r}")
    if format == 'onnx':
        for package in ('onnx', 'onnxruntime') + (('onnxscript',) if exporter == 'dynamo' else ()):
            try:
                __import__(package)
            except ImportError:
                raise UsageError(f'ONNX export needs {package}: pip install onnx onnxruntime onnxscript '
                                 f"(or mlpvision's [dev] extra)") from None
    native = tuple(input_size) if input_size is not None else _native_size(model)
    if dynamic_size and not _takes_any_size(model):
        from .models._base import model_name
        raise UsageError(f'{model_name(model)} is built for {native[0]}x{native[1]} input only (its token-mixing '
                         f'weights are sized for it), so its graph cannot take a dynamic height and width: export '
                         f'without --dynamic-size, or build the model for another size (--model-kwargs img_size=...)')
    out = Path(out)
    model = model.eval()
    in_chans = getattr(model, 'in_chans', 3)
    example = torch.randn(_EXAMPLE_BATCH if dynamic_batch else 1, in_chans, *native,
                          generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            model(example)
    except ValueError as e:  # a size or channel count the model does not take: the model's own message
        raise UsageError(str(e)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{out.name}.', suffix=_SUFFIXES[format], dir=out.parent)
    os.close(fd)
    start = time.perf_counter()
    try:
        try:
            with torch.no_grad():
                size_range = _write(model, example, format, exporter, tmp, dynamic_batch, dynamic_size, opset)
        except Exception as e:
            raise ExportError(f'{exporter} could not export {_family(model) or type(model).__name__}: '
                              f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}; '
                              f'nothing was written') from e
        run = _runner(format, tmp)
        checks = _verify(model, run, in_chans, _check_sizes(native, dynamic_size, size_range),
                         _CHECK_BATCHES if dynamic_batch else (1,), tolerance)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    result = ExportResult(out, format, exporter, tuple(example.shape), dynamic_batch, dynamic_size, size_range,
                          checks, time.perf_counter() - start)
    _logger.debug('exported %s to %s: max rel diff %.2e', family, out, result.max_rel_diff)
    return result
