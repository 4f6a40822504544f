"""Post-training int8 quantization of the deploy form, for CPU inference.

The route is PyTorch 2 export quantization (PT2E) with the x86 quantizer, then inductor:

1. the model is re-parameterised (:func:`mlpvision.reparameterize`) and captured with ``torch.export`` (batch
   dynamic);
2. the graph is tidied so the quantizer sees every GEMM (:func:`_prepare_graph`): no-op dropouts go, a constant
   ``W @ x`` (ResMLP's token mixing, a ``matmul`` with the weight first) becomes ``linear(x^T, W)^T``, and every
   ``aten.linear`` is tagged as the linear it is (our layers call ``F.linear`` with a module's weight from inside
   :mod:`mlpvision.layers.fast_linear`, which the quantizer's module-based matching does not recognise);
3. torchao's ``X86InductorQuantizer`` (default config: int8 activations per tensor, static, from a histogram
   observer, 7-bit on a CPU without int8 dot products, :func:`int8_dot_products`; int8 weights per output
   channel, symmetric) annotates convs and linears with their fused activations
   and residual adds; ``prepare_pt2e`` inserts observers, a few hundred real images are run through them
   (calibration), and ``convert_pt2e`` turns the graph into quantize / dequantize pairs around float ops (batch
   norms that no conv absorbed become multiply-adds first, :func:`_bn_to_affine`);
4. ``torch.compile`` with inductor's ``freezing`` matches those patterns and lowers them to oneDNN's int8 kernels
   (``onednn::qlinear_pointwise``, ``onednn::qconv_pointwise``: VNNI / AMX-INT8 where the CPU has them) with the
   weights pre-packed and the activation fused.

Without step 4 the converted graph runs as a simulation (dequantize, float op, quantize), correct but slower than
float: :class:`QuantizedModel` compiles it on its first call unless asked not to.

Figures and what it took are in ``docs/benchmarks.md``, "int8 post-training quantization": without the graph
tidying the quantizer annotated 2 of ResMLP-S12's 25 linear layers. Eager ``torch.ao.quantization.quantize_dynamic``
was not an option: our MLP layers read their module's ``weight`` tensor, which a dynamically quantized ``Linear``
does not have.

The artifact (:meth:`QuantizedModel.save`) is one ``.safetensors`` file: the float deploy weights, the observers'
calibration state (histograms, ranges) and a JSON recipe (model name and arguments, classes, preprocessing, versions)
in the file's metadata. :func:`load_quantized` rebuilds the deploy model from the recipe, repeats steps 1-3 with the
saved observer state in place of calibration, and so gives the same quantized program; nothing is unpickled (a
``torch.export`` ``.pt2`` file was the other candidate, but ``torch.export.load`` falls back to
``torch.load(weights_only=False)``, which can run code from the file).

Needs ``torchao`` (``pip install mlpvision[quantize]``).
"""
from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ._checkpoint import CheckpointError, atomic_save
from ._reparam import reparameterize
from .errors import UsageError
from .layers.fast_linear import onednn_bf16_supported

__all__ = ['QuantizedModel', 'quantize', 'load_quantized', 'calibration_batches', 'SUPPORTED_FAMILIES',
           'FORMAT_VERSION']

FORMAT_VERSION = 1
_META_KEY = 'mlpvision_int8'

# families whose deploy form goes through torch.export and the x86 quantizer (tests/test_quantize.py: a small model
# of each, the int8 program against the float one). Strip-MLP's graph stops the quantizer ("Input partition has
# more than one output node": a layer called at several places), so it is refused up front. A family's captured
# graph must write into no buffer (CycleMLP's shift, models/cycle_mlp.py): the quantizer observes a GEMM's input
# where the graph defines it, before any in-place copy fills it.
SUPPORTED_FAMILIES = ('as_mlp', 'cycle_mlp', 'hire_mlp', 'repmlp', 'repmlpnet', 'resmlp', 'wave_mlp')


def _torchao():
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError:
        raise UsageError('int8 quantization needs torchao: pip install "mlpvision[quantize]" (or pip install '
                         'torchao)') from None
    return prepare_pt2e, convert_pt2e, xiq


def _family(model: nn.Module) -> str:
    from .models import model_family
    name = getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__
    try:
        return model_family(name)
    except Exception:  # a model that is not one of ours
        return type(model).__name__


def _check_family(family: str) -> None:
    if family not in SUPPORTED_FAMILIES:
        raise UsageError(f'int8 quantization supports the {", ".join(SUPPORTED_FAMILIES)} families; got a '
                         f'{family} model (its deploy form does not go through torch.export and the x86 quantizer '
                         f'yet: run it in bf16 instead, `mlpvision bench --dtype bf16 --reparam`)')


def _fake_mode(value: torch.Tensor):
    """The fake-tensor mode of an exported node's ``meta['val']``, to give the nodes made here theirs."""
    from torch._guards import detect_fake_mode
    return detect_fake_mode([value])


def _prepare_graph(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Tidy an exported inference graph for the x86 quantizer (module docstring, step 2); returns ``gm``."""
    g = gm.graph
    aten = torch.ops.aten
    for n in list(g.nodes):
        if n.op != 'call_function':
            continue
        if n.target == aten.dropout.default and len(n.args) == 3 and n.args[2] is False:
            n.replace_all_uses_with(n.args[0])
            g.erase_node(n)
        elif n.target == aten.matmul.default and _is_weight(n.args[0]) and _rank(n.args[1]) == 3:
            weight, x = n.args
            fake = _fake_mode(x.meta['val'])
            with g.inserting_before(n):
                xt = g.call_function(aten.transpose.int, (x, 1, 2))
                lin = g.call_function(aten.linear.default, (xt, weight))
                out = g.call_function(aten.transpose.int, (lin, 1, 2))
            with fake:
                xt.meta['val'] = x.meta['val'].transpose(1, 2)
                lin.meta['val'] = torch.nn.functional.linear(xt.meta['val'], weight.meta['val'])
                out.meta['val'] = lin.meta['val'].transpose(1, 2)
            for new in (xt, lin, out):
                new.meta['nn_module_stack'] = n.meta.get('nn_module_stack', {})
            n.replace_all_uses_with(out)
            g.erase_node(n)
    for n in g.nodes:
        if n.op == 'call_function' and n.target == aten.linear.default and not n.meta.get('source_fn_stack'):
            # the quantizer finds linears by their source; ours call F.linear with a module's weight
            n.meta['source_fn_stack'] = [(n.name, torch.nn.functional.linear)]
    g.lint()
    gm.recompile()
    return gm


def _bn_to_affine(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Inference batch norms that no conv absorbed (RepMLPNet's pre-norms and final norm) as ``x * scale + shift``.

    ``convert_pt2e`` runs its QAT conv-bn folding whenever a batch norm is left in the graph, and that traces 96
    patterns with ``torch.export``: 16 s of CPU for a tiny RepMLPNet, on every quantize and load. The same
    arithmetic as a multiply-add leaves it nothing to do (and inductor fuses it into its neighbours either way).
    """
    g = gm.graph
    aten = torch.ops.aten
    for i, n in enumerate(list(g.nodes)):
        if n.op != 'call_function':
            continue
        if n.target == aten.batch_norm.default and n.args[5] is False:  # (x, w, b, mean, var, training, mom, eps)
            x, *params = n.args[:5]
            eps, outputs = n.args[7], [n]
        elif n.target == aten._native_batch_norm_legit_no_training.default:  # (x, w, b, mean, var, mom, eps)
            x, *params = n.args[:5]
            eps, outputs = n.args[6], list(n.users)
            if not all(u.target is operator.getitem and u.args[1] == 0 for u in outputs):
                continue
        else:
            continue
        if not all(isinstance(t, torch.fx.Node) and t.op == 'get_attr' for t in params):
            continue
        w, b, mean, var = (_attr(gm, t.target) for t in params)
        shape = (-1,) + (1,) * (_rank(x) - 2)
        scale = (w / torch.sqrt(var + eps)).detach().reshape(shape)
        shift = (b.detach().reshape(shape) - mean.reshape(shape) * scale)
        names = (f'_int8_bn{i}_scale', f'_int8_bn{i}_shift')
        gm.register_buffer(names[0], scale)
        gm.register_buffer(names[1], shift)
        with g.inserting_before(n):
            scale_node, shift_node = g.get_attr(names[0]), g.get_attr(names[1])
            mul = g.call_function(aten.mul.Tensor, (x, scale_node))
            add = g.call_function(aten.add.Tensor, (mul, shift_node))
        with _fake_mode(x.meta['val']):
            mul.meta['val'] = x.meta['val'] * torch.empty(scale.shape)
            add.meta['val'] = mul.meta['val'] + torch.empty(scale.shape)
        for out in outputs:
            out.replace_all_uses_with(add)
            if out is not n:
                g.erase_node(out)
        g.erase_node(n)
    g.eliminate_dead_code()
    g.lint()
    gm.recompile()
    return gm


def _attr(gm: torch.fx.GraphModule, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition('.')
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _is_weight(node: Any) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == 'get_attr' and _rank(node) == 2


def _rank(node: Any) -> int:
    val = node.meta.get('val') if isinstance(node, torch.fx.Node) else None
    return val.dim() if isinstance(val, torch.Tensor) else -1


def _prepared(model: nn.Module, input_size: Sequence[int]) -> torch.fx.GraphModule:
    """Steps 1-3 of the module docstring up to the observers: the deploy model exported, tidied and prepared."""
    prepare_pt2e, _, xiq = _torchao()
    example = torch.randn(2, *input_size)
    batch = torch.export.Dim('batch', min=1, max=1 << 16)
    try:
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as e:  # a graph break, data-dependent control flow: say which model and why
        raise UsageError(f'torch.export could not capture {type(model).__name__} ({type(e).__name__}: '
                         f'{str(e).splitlines()[0] if str(e) else ""}); int8 quantization needs an exportable '
                         f'deploy form') from None
    gm = _prepare_graph(ep.module())
    config = xiq.get_default_x86_inductor_quantization_config(reduce_range=not int8_dot_products())
    quantizer = xiq.X86InductorQuantizer().set_global(config)
    try:
        return prepare_pt2e(gm, quantizer)
    except (ValueError, AssertionError, RuntimeError) as e:
        raise UsageError(f'the x86 quantizer could not annotate {type(model).__name__} ({type(e).__name__}: {e}); '
                         f'run it in bf16 instead') from None


@dataclass
class _Recipe:
    model_name: str
    model_kwargs: dict = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 224, 224)
    classes: list[str] | None = None
    data_config: dict | None = None
    calibration: dict = field(default_factory=dict)  # images, source
    accuracy: dict = field(default_factory=dict)  # top-1 before / after, where measured
    versions: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({'format_version': FORMAT_VERSION, **self.__dict__}, sort_keys=True)


class QuantizedModel(nn.Module):
    """An int8 model: the converted PT2E program of a deploy-form model, compiled with inductor on first use.

    CPU only. ``compile=False`` keeps the program as it is (quantize / dequantize around float ops: the reference
    arithmetic, slow); ``compile=True`` (default) runs it through ``torch.compile`` with ``freezing``, which lowers
    it to oneDNN's int8 kernels. One compiled graph per input shape (``dynamic=False``), as ``mlpvision bench``
    does. The input is a float (B, C, H, W) batch preprocessed as for the float model; the output float logits.

    ``bf16`` (compiled only): run what stays in floating point (the ops the quantizer leaves alone, such as
    RepMLPNet's grouped FCs, and the element-wise work between the int8 GEMMs) under bf16 autocast, the x86
    quantizer's "int8-mixed-bf16" mode. None (default): where the CPU has native bf16 (AVX512-BF16 / AMX). On the
    host of docs/benchmarks.md it took RepMLPNet-T224 from 1.2-1.4x to 1.8-2.0x our bf16 throughput and ResMLP-S12
    (all of whose GEMMs are int8) from 1.9x to 2.0-2.1x.
    """

    def __init__(self, program: torch.fx.GraphModule, recipe: _Recipe, observer_state: dict[str, torch.Tensor],
                 compile: bool = True, bf16: bool | None = None) -> None:
        super().__init__()
        self.training = False
        self.program = program
        self.recipe = recipe
        self._observer_state = observer_state
        self._compile = compile
        self.bf16 = onednn_bf16_supported() if bf16 is None else bool(bf16)
        self._compiled = None

    def train(self, mode: bool = True) -> QuantizedModel:
        """Inference only: the exported program has no training form (and refuses ``train()`` / ``eval()``), so
        this changes nothing; it lets code that calls ``model.eval()`` (``mlpvision.engine.evaluate``) run it."""
        return self

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.recipe.input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_size:
            raise UsageError(f'the quantized model takes (B, {", ".join(map(str, self.input_size))}) inputs; got '
                             f'{tuple(x.shape)}')
        if x.device.type != 'cpu':
            raise UsageError(f'the int8 model runs on the CPU (oneDNN int8 kernels); got an input on {x.device}: '
                             f'move it with .cpu()')
        if not self._compile:
            return self.program(x)
        if self._compiled is None:
            self._compiled = torch.compile(self.program, dynamic=False)
        import torch._inductor.config as inductor_config

        # freezing: weights become constants, so inductor pre-packs them and folds the int8 patterns; set for
        # every call, since a new input shape compiles again (``options={'freezing': True}`` did not reach the
        # quantization passes in torch 2.14: onednn.qconv_prepack then failed under fake tensors)
        with torch.no_grad(), inductor_config.patch(freezing=True), torch.autocast('cpu', torch.bfloat16, self.bf16):
            return self._compiled(x).float()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact (module docstring) atomically; returns its path."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().clone() for k, v in self._observer_state.items()}
        meta = {_META_KEY: self.recipe.to_json()}
        return atomic_save(tensors, path, writer=lambda obj, p: save_file(obj, p, metadata=meta))


def int8_dot_products() -> bool:
    """Whether this CPU has int8 dot products that accumulate in int32 (AVX512-VNNI, AVX-VNNI or AMX-INT8).

    Without them (an AVX2-only CPU) the u8 x s8 kernels add pairs of products in int16 with saturation
    (``vpmaddubsw``), and 8-bit activations overflow it: on a 2-core AVX2 AMD EPYC, a compiled tiny ResMLP's logits
    were 29% (of the largest) away from the reference int8 program. There the activations are quantized to 7 bits
    (the quantizer's ``reduce_range``), as fbgemm does on such CPUs, and the kernels agree with the program again
    (tests/test_quantize.py). The choice is made where the program is built, in :func:`quantize` and again in
    :func:`load_quantized` from the saved observer state, so an artifact follows the CPU that loads it.
    """
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, 'get_capabilities') else {}
    return any(caps.get(k, False) for k in ('avx512_vnni', 'avx_vnni', 'amx_int8'))


def _observer_state(prepared: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in prepared.state_dict().items()}


def _versions() -> dict[str, str]:
    import torchao

    from ._version import __version__
    return {'mlpvision': __version__, 'torch': torch.__version__, 'torchao': torchao.__version__}


def _batches(calibration: torch.Tensor | Iterable) -> Iterable[torch.Tensor]:
    if isinstance(calibration, torch.Tensor):
        calibration = calibration.split(32) if calibration.dim() == 4 else [calibration]
    for b in calibration:
        yield b[0] if isinstance(b, (tuple, list)) else b


@torch.no_grad()
def quantize(
        model: nn.Module,
        calibration: torch.Tensor | Iterable,
        input_size: Sequence[int] | None = None,
        compile: bool = True,
        bf16: bool | None = None,
        classes: Sequence[str] | None = None,
        data_config: dict | None = None,
        model_name: str | None = None,
        model_kwargs: dict | None = None,
) -> QuantizedModel:
    """Quantize ``model`` (an mlpvision model of a supported family, train or deploy form; it is not changed) to int8.

    Args:
        calibration: preprocessed images, a (N, C, H, W) tensor or an iterable of batches (or of ``(images, labels)``
            pairs, as a data loader yields); a few hundred real images are enough (docs/benchmarks.md).
        input_size: (C, H, W); default: the model's (its ``img_size`` and ``in_chans``, else its cfg's).
        compile, bf16: see :class:`QuantizedModel`.
        classes, data_config: stored in the artifact for ``mlpvision predict``-style use.
        model_name, model_kwargs: how to rebuild the model when loading the artifact; default: the model's
            registered name (``pretrained_cfg['architecture']``) and no extra arguments, which fits only a model
            built with its defaults (give the kwargs it was built with otherwise).

    Raises:
        UsageError: no calibration images, a family that is not supported, torchao missing.
    """
    _torchao()
    _check_family(_family(model))
    name = model_name or getattr(model, 'pretrained_cfg', {}).get('architecture')
    if not name:
        raise UsageError('pass model_name=: the model has no pretrained_cfg naming its architecture, which the '
                         'artifact needs to rebuild it')
    if input_size is None:
        from .data.transforms import resolve_data_config
        input_size = resolve_data_config(model).input_size  # a model built for another size knows it
    input_size = tuple(input_size)
    deploy = _rebuilt(name, dict(model_kwargs or {}), reparameterize(model).state_dict())
    prepared = _prepared(deploy, input_size)
    n = 0
    for x in _batches(calibration):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != input_size:
            raise UsageError(f'calibration batches must be (B, {", ".join(map(str, input_size))}) image tensors; '
                             f'got {type(x).__name__}{tuple(x.shape) if isinstance(x, torch.Tensor) else ""}')
        prepared(x.float().cpu())
        n += x.shape[0]
    if n == 0:
        raise UsageError('no calibration images: give a few hundred preprocessed images (a folder of them with '
                         '`mlpvision quantize --calib-dir DIR`, or calibration_batches(DIR, ...))')
    recipe = _Recipe(model_name=name, model_kwargs=dict(model_kwargs or {}), input_size=input_size,
                     classes=list(classes) if classes is not None else None, data_config=data_config,
                     calibration={'images': n}, versions=_versions())
    state = _observer_state(prepared)
    return _converted(prepared, recipe, state, compile, bf16)


def _rebuilt(name: str, kwargs: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The deploy model as :func:`load_quantized` builds it (``create_model(name, deploy=True, **kwargs)``) holding
    ``state_dict``: the program, and so the numbering of its observers, is made from the same module either way (a
    re-parameterised model registers some parameters in another order than one built in deploy form)."""
    from ._checkpoint import load_weights
    from .models import create_model

    try:
        model = create_model(name, deploy=True, **kwargs)
    except TypeError as e:
        raise UsageError(f'cannot rebuild {name} with model_kwargs={kwargs} ({e}); pass the arguments the model '
                         f'was built with') from None
    load_weights(model, {k: v.float().cpu() for k, v in state_dict.items()},
                 f'the deploy form of the model (as {name} with {kwargs or "no arguments"})')
    return model.eval()


def _converted(prepared: torch.fx.GraphModule, recipe: _Recipe, state: dict[str, torch.Tensor],
               compile: bool, bf16: bool | None = None) -> QuantizedModel:
    _, convert_pt2e, _ = _torchao()
    program = convert_pt2e(_bn_to_affine(prepared))
    return QuantizedModel(program, recipe, state, compile=compile, bf16=bf16)


def load_quantized(path: str | os.PathLike, compile: bool = True, bf16: bool | None = None) -> QuantizedModel:
    """Load an artifact written by :meth:`QuantizedModel.save` (no code runs from the file: safetensors + JSON);
    ``compile`` and ``bf16`` as for :class:`QuantizedModel`.

    Raises:
        CheckpointError: not such an artifact, from another format version, or state that does not fit the program
            rebuilt here (another torch / torchao version can number its observers differently: re-quantize).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    from .models import create_model

    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'quantized model {path!r} does not exist')
    try:
        with safe_open(path, 'pt') as f:
            meta = f.metadata() or {}
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f'{path!r} is not a quantized mlpvision model (.safetensors from `mlpvision '
                              f'quantize`): {e}') from None
    if _META_KEY not in meta:
        raise CheckpointError(f'{path!r} is a safetensors file but not a quantized mlpvision model (no '
                              f'{_META_KEY!r} metadata); make one with `mlpvision quantize`')
    info = json.loads(meta[_META_KEY])
    if info.pop('format_version', None) != FORMAT_VERSION:
        raise CheckpointError(f'{path!r} has quantized-model format {info.get("format_version")!r}; this mlpvision '
                              f'reads {FORMAT_VERSION}: re-quantize with this version')
    recipe = _Recipe(**{k: v for k, v in info.items()})
    recipe.input_size = tuple(recipe.input_size)
    model = create_model(recipe.model_name, deploy=True, **recipe.model_kwargs)
    prepared = _prepared(model.eval(), recipe.input_size)
    expected = prepared.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and expected[k].numel() and expected[k].shape != state[k].shape
              and not k.startswith('activation_post_process')]
    if missing or unexpected or shapes:
        saved = recipe.versions
        raise CheckpointError(
            f'{path!r} does not fit the program rebuilt for {recipe.model_name} (missing {missing[:3]}, unexpected '
            f'{unexpected[:3]}, mis-shaped {shapes[:3]}); it was written by {saved}, this is {_versions()}: '
            f're-quantize with this version')
    prepared.load_state_dict(state, strict=True)
    with torch.no_grad():
        # the per-channel observers' own loading sets min_val / max_val only, and leaves eps at float32's (the
        # x86 config gives the weights 2^-12), which changed the weight scales of small layers: copy every buffer
        for name, buf in prepared.named_buffers():
            buf.resize_(state[name].shape).copy_(state[name])
    return _converted(prepared, recipe, state, compile, bf16)


def calibration_batches(
        folder: str | os.PathLike,
        data_config: Any,
        num_images: int = 256,
        batch_size: int = 32,
) -> list[torch.Tensor]:
    """``num_images`` images of ``folder`` (searched recursively) through the model's eval preprocessing, in
    batches; taken evenly over the sorted file list, so that a folder of class sub-folders gives every class its
    share. ``data_config``: a :class:`mlpvision.data.transforms.DataConfig` (or its dict).

    Raises:
        UsageError: the folder has no images, or ``num_images`` < 1.
    """
    from .data.datasets import DatasetError, load_image
    from .data.transforms import DataConfig, build_transform
    from .engine.inference import find_images

    if num_images < 1:
        raise UsageError(f'the number of calibration images must be at least 1; got {num_images}')
    try:
        files = find_images([folder])
    except DatasetError as e:
        raise UsageError(f'no calibration images: {e}') from None
    if len(files) > num_images:
        step = len(files) / num_images
        files = [files[int(i * step)] for i in range(num_images)]
    dc = DataConfig.from_dict(data_config) if isinstance(data_config, dict) else data_config
    tf = build_transform(dc, False)
    images = [tf(load_image(f, skip_flag=False)) for f in files]
    return list(torch.stack(images).split(batch_size))
