"""Pictures of a backbone: effective receptive fields, learned token-mixing weights, Grad-CAM and feature maps.

Each ``plot_*`` function writes a PNG and the raw arrays as ``.npy`` into a folder and returns what it computed; the
``mlpvision viz`` subcommands are thin wrappers around them. Every registered model works, random-init or loaded from
a checkpoint (:func:`load_model`), because everything here goes through the shared model contract
(``forward_intermediates``, ``trunk()``, ``forward_head``) rather than through family internals; only the weight
pictures (:func:`token_mixing_weights`) read family-specific layers, named there.

* ERF (:func:`effective_receptive_field`): the gradient of the centre position of a stage's output (summed over
  channels) w.r.t. the input, absolute, summed over input channels and averaged over images, as in RepLKNet (Ding et
  al., CVPR 2022, Sec. 5 and its ``erf`` tool) and the AS-MLP / Strip-MLP receptive-field figures. The figure shows
  ``log10`` of the map divided by its maximum, so a long tail stays visible; the ``.npy`` holds the linear mean.
* Weights: ResMLP's cross-patch ``linear_tokens`` rows as h x w maps (Touvron et al., 2021, Fig. 4), RepMLP's /
  RepMLPNet's fc3 rows after :func:`mlpvision.reparameterize` (the Local Perceptron merged into the FC; Ding et al.,
  2021/2022), and Strip-MLP's CGSMM strip convolutions as output x input token matrices.
* Grad-CAM (Selvaraju et al., ICCV 2017) at the last trunk unit, with the top-5 classes.
* Features: the first three principal components of each stage's features as RGB.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .data.datasets import load_image
from .data.transforms import DataConfig, build_transform
from .errors import UsageError

__all__ = ['VizModel', 'load_model', 'load_images', 'effective_receptive_field', 'erf_radii', 'stage_erf',
           'plot_erf', 'token_mixing_weights', 'plot_weights', 'grad_cam', 'plot_cam', 'feature_pca',
           'plot_features', 'ERF_FRACTIONS']

_logger = logging.getLogger('mlpvision.viz')

ERF_FRACTIONS = (0.2, 0.5, 0.9)  # the mass fractions whose radii are reported (RepLKNet reports 20% and 99%)
_LOG_FLOOR = -4.0  # ERF figures: log10(map / max) clipped here, four decades below the peak


@dataclass
class VizModel:
    """A model ready for pictures: in eval mode, with its preprocessing and class names."""
    model: nn.Module
    name: str
    data_cfg: DataConfig
    classes: list[str] = field(default_factory=list)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_cfg.input_size)


def load_model(name: str | None = None, checkpoint: str | os.PathLike | None = None,
               model_kwargs: dict | None = None, img_size: int | None = None) -> VizModel:
    """A model from WEIGHTS (:func:`mlpvision.engine.loading.open_weights`: a name, ``name.tag``, a checkpoint file
    or a convert folder).

    Args:
        name: WEIGHTS; with ``checkpoint``, the model name of that file (official files need it).
        checkpoint: a checkpoint file (the older spelling of passing it as ``name``).
        img_size: the input size; default the checkpoint's or the model's. For a fixed-size family (ResMLP,
            RepMLP, Strip-MLP) a random-init model is built at this size.
    """
    from .engine.loading import open_weights, require_task

    if checkpoint is not None:
        loaded = open_weights(checkpoint, model=name, model_kwargs=model_kwargs, img_size=img_size)
    elif name is not None:
        loaded = open_weights(name, model_kwargs=model_kwargs, img_size=img_size)
    else:
        raise UsageError('name the weights: a model (`mlpvision models --names-only` lists them), NAME.TAG, a '
                         'checkpoint file or a convert folder')
    require_task(loaded, 'classification', 'viz')
    return VizModel(loaded.model.eval(), loaded.name, loaded.data_cfg, list(loaded.classes))


def load_images(paths: Sequence[str | os.PathLike], data_cfg: DataConfig) -> torch.Tensor:
    """Image files (or folders of them) through the model's eval preprocessing, as one (N, C, H, W) batch.

    Raises:
        UsageError: a file that does not exist or cannot be decoded (named), or no images.
    """
    from .engine.inference import find_images
    tf = build_transform(data_cfg, False)
    return torch.stack([tf(load_image(f, skip_flag=False)) for f in find_images(paths)])


def _unnormalize(x: torch.Tensor, data_cfg: DataConfig) -> np.ndarray:
    """A preprocessed (C, H, W) image back to an (H, W, 3) array in [0, 1] for display."""
    mean = torch.tensor(data_cfg.mean).view(-1, 1, 1)
    std = torch.tensor(data_cfg.std).view(-1, 1, 1)
    img = (x.detach().cpu() * std + mean).clamp(0, 1)
    if img.shape[0] != 3:
        img = img[:1].expand(3, -1, -1)  # grey (or other channel counts): the first channel as grey
    return img.permute(1, 2, 0).numpy()


# --- effective receptive field ---------------------------------------------------------------------------------

def effective_receptive_field(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                              batch_size: int = 8) -> np.ndarray:
    """Mean over ``inputs`` of |d out[:, :, h // 2, w // 2].sum() / d input|, summed over input channels.

    Args:
        fn: maps an (N, C, H, W) batch to an (N, C', h, w) map (a stage's output, a single conv, ...). It must treat
            the images independently (a model in eval mode does), so one backward gives each image's gradient.
        inputs: the images, (N, C, H, W).

    Returns:
        The (H, W) map, float64.
    """
    total = torch.zeros(inputs.shape[-2:], dtype=torch.float64)
    for start in range(0, inputs.shape[0], batch_size):
        x = inputs[start:start + batch_size].detach().clone().requires_grad_(True)
        out = fn(x)
        if out.ndim != 4:
            raise UsageError(f'the ERF needs an NCHW map, got a tensor of shape {tuple(out.shape)}')
        h, w = out.shape[-2:]
        (grad,) = torch.autograd.grad(out[:, :, h // 2, w // 2].sum(), x)
        total += grad.abs().sum(1).sum(0).double().cpu()
    return (total / inputs.shape[0]).numpy()


def erf_radii(erf: np.ndarray, fractions: Sequence[float] = ERF_FRACTIONS) -> dict[float, int]:
    """Half-side (pixels) of the smallest square centred on the input's centre holding each fraction of the mass.

    A radius r means the square of side 2r + 1 around pixel (H // 2, W // 2); a map whose mass is all in the centre
    pixel has radius 0. The square follows RepLKNet's high-contribution area ratio, reported here as a radius.
    """
    h, w = erf.shape
    cy, cx = h // 2, w // 2
    total = float(erf.sum())
    radii: dict[float, int] = {}
    max_r = max(cy, cx, h - 1 - cy, w - 1 - cx)
    masses = [float(erf[max(0, cy - r):cy + r + 1, max(0, cx - r):cx + r + 1].sum()) for r in range(max_r + 1)]
    for f in fractions:
        radii[f] = next((r for r, m in enumerate(masses) if total == 0 or m >= f * total - 1e-12 * total), max_r)
    return radii


def _unit_word(model: nn.Module) -> str:
    """What one trunk unit is called: a block of an isotropic model, else a stage."""
    return 'block' if getattr(model, 'trunk_name', 'stages') == 'blocks' else 'stage'


def _num_stages(model: nn.Module) -> int:
    return len(model.trunk()) if hasattr(model, 'trunk') else len(model.feature_info)


def _check_stage(vm: VizModel, stage: int | None) -> int:
    n = _num_stages(vm.model)
    if stage is None:
        return n - 1
    if not -n <= stage < n:
        raise UsageError(f'{vm.name} has no stage {stage}: it has {n} (--stage 0 to {n - 1}, or -1 for the last)')
    return stage % n


def stage_erf(vm: VizModel, stage: int, inputs: torch.Tensor) -> np.ndarray:
    """The ERF of one trunk unit (a pyramid stage or an isotropic block) of ``vm``'s model."""
    stage = _check_stage(vm, stage)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return vm.model.forward_intermediates(x, indices=[stage], intermediates_only=True, stop_early=True)[0]
    return effective_receptive_field(fn, inputs)


def _inputs(vm: VizModel, images: Sequence[str | os.PathLike] | None, random: int, seed: int) -> torch.Tensor:
    if images:
        return load_images(images, vm.data_cfg)
    if random < 1:
        raise UsageError(f'--random takes the number of random images (at least 1), got {random}')
    g = torch.Generator().manual_seed(seed)
    return torch.randn(random, *vm.input_size, generator=g)


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("the pictures need matplotlib, which mlpvision's base install leaves out: "
                         "pip install 'mlpvision[train]' (or pip install matplotlib)") from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def plot_erf(models: Sequence[VizModel], out_dir: str | os.PathLike, stage: int | None = None,
             images: Sequence[str | os.PathLike] | None = None, random: int = 8, seed: int = 0) -> dict:
    """ERF figure: one panel per stage of one model (``stage`` None), else one panel per model at ``stage`` (the
    last when None and several models are given). Writes ``erf.png`` and one ``erf_<model>_stage<k>.npy`` per panel.

    Returns:
        ``{(model name, stage): {'erf': (H, W) array, 'radii': {fraction: pixels}, 'npy': path}}`` and ``'png'``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    panels = []
    for vm in models:
        stages = [_check_stage(vm, stage)] if stage is not None or len(models) > 1 else range(_num_stages(vm.model))
        x = _inputs(vm, images, random, seed)
        for s in stages:
            panels.append((vm, s, stage_erf(vm, s, x), x.shape[0]))
    result: dict = {}
    plt = _plt()
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis('off')
    for ax, (vm, s, erf, _) in zip(axes.flat, panels, strict=False):
        radii = erf_radii(erf)
        npy = out / f'erf_{vm.name}_stage{s}.npy'
        np.save(npy, erf.astype(np.float32))
        result[(vm.name, s)] = dict(erf=erf, radii=radii, npy=npy)
        peak = erf.max()
        shown = np.log10(np.maximum(erf / peak, 10 ** _LOG_FLOOR)) if peak > 0 else np.full_like(erf, _LOG_FLOOR)
        im = ax.imshow(shown, cmap='viridis', vmin=_LOG_FLOOR, vmax=0)
        r = '/'.join(str(radii[f]) for f in ERF_FRACTIONS)
        ax.set_title(f'{vm.name}, {_unit_word(vm.model)} {s}\nr20/50/90 = {r} px', fontsize=9)
        ax.set_xlabel('input x (px)', fontsize=8)
        ax.set_ylabel('input y (px)', fontsize=8)
        ax.tick_params(labelsize=7)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.set_label('log10(|grad| / max)', fontsize=8)
        cb.ax.tick_params(labelsize=7)
    src = 'images' if images else 'random images'
    fig.suptitle(f'Effective receptive field (mean over {panels[0][3]} {src})', fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    png = out / 'erf.png'
    fig.savefig(png, dpi=100)
    plt.close(fig)
    result['png'] = png
    return result


# --- token-mixing weights --------------------------------------------------------------------------------------

def _weight_layers(model: nn.Module) -> tuple[str, list[tuple[str, nn.Module]]]:
    """The kind of token-mixing weights ``model`` has and the layers holding them, in forward order."""
    from .models.repmlp import RepMLPBlock
    from .models.repmlpnet import RepMLPNetBlock
    from .models.resmlp import ResMLPBlock
    from .models.strip_mlp import CGSMM
    kinds = (('linear_tokens', ResMLPBlock), ('fc3', (RepMLPBlock, RepMLPNetBlock)), ('strip', CGSMM))
    for kind, cls in kinds:
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, cls)]
        if layers:
            return kind, layers
    return '', []


def token_mixing_weights(vm: VizModel, layer: int = 0) -> tuple[np.ndarray, str, str]:
    """The token-mixing weights of one layer, as maps over input positions for each output position.

    * ResMLP (``linear_tokens``, N = h * w patches): (h, w, h, w), ``[i, j]`` the weights output patch (i, j) gives
      every input patch;
    * RepMLP / RepMLPNet (fc3 after :func:`mlpvision.reparameterize`, so the Local Perceptron's kernels are in it):
      (h, w, h, w) for the first output channel (RepMLP-Res50: summed over its group's input channels) or share-set;
    * Strip-MLP (CGSMM): (2, w, w), the row and column strip convolutions' output token x input token weights,
      averaged over channel slots and strip offsets.

    Returns:
        The array, a description for titles, and the layer's module name.

    Raises:
        UsageError: the model has no such weights (AS-MLP, Hire-MLP: their token mixers are shifts and convs, see
            ``viz erf``), or ``layer`` is out of range.
    """
    model = vm.model
    kind, layers = _weight_layers(model)
    if kind == 'fc3':  # a copy: the caller's model keeps its train form
        from ._reparam import reparameterize
        model = reparameterize(copy.deepcopy(model))
        kind, layers = _weight_layers(model)
    if not layers:
        raise UsageError(f'{vm.name} has no cross-patch token-mixing weights to show (viz weights takes the '
                         f'isotropic ResMLP models, RepMLP / RepMLPNet fc3 and Strip-MLP strips); use viz erf or '
                         f'viz features for it')
    if not -len(layers) <= layer < len(layers):
        raise UsageError(f'{vm.name} has no token-mixing block {layer}: it has {len(layers)} (--block 0 to '
                         f'{len(layers) - 1})')
    name, m = layers[layer]
    with torch.no_grad():
        if kind == 'linear_tokens':
            gh, gw = model.grid_size
            w = m.linear_tokens.weight.detach().float().reshape(gh, gw, gh, gw)  # out patch (i, j), in patch (k, l)
            return w.numpy(), f'linear_tokens weights ({gh}x{gw} patches)', name
        if kind == 'fc3':
            h, w_ = m.h, m.w
            weight = m.fc3.weight.detach().float()
            if hasattr(m, 'num_sharesets'):  # RepMLPNet: (S*h*w, h*w, 1, 1), rows of share-set 0 first
                rows = weight[:h * w_, :, 0, 0]  # h*w out, h*w in
            else:  # RepMLP-Res50: (O*h*w, C/g*h*w, 1, 1); output channel 0, summed over its group's input channels
                rows = weight[:h * w_, :, 0, 0].reshape(h * w_, -1, h * w_).sum(1)
            return rows.reshape(h, w_, h, w_).numpy(), f'fc3 weights after reparameterize ({h}x{w_} partition)', name
        c2 = m.group_dim
        out = []
        for conv, n in ((m.row, m.size[1]), (m.col, m.size[0])):
            wt = conv.weight.detach().float().reshape(c2, n, n, -1)  # slot, out token, in token, strip offset
            out.append(wt.mean((0, 3)))
        if out[0].shape != out[1].shape:
            raise UsageError(f'{vm.name}: the strip maps are drawn for square feature maps only, got {m.size}')
        return torch.stack(out).numpy(), 'CGSMM strip weights (rows | columns)', name


def plot_weights(vm: VizModel, out_dir: str | os.PathLike, layer: int = 0, max_side: int = 8) -> dict:
    """Token-mixing weight figure (:func:`token_mixing_weights`): for (h, w, h, w) weights, the maps of up to
    ``max_side`` x ``max_side`` output positions evenly spaced over the grid, each on its own symmetric colour scale;
    for Strip-MLP, the two output x input matrices. Writes ``weights_<model>_layer<k>.png`` / ``.npy``."""
    arr, desc, name = token_mixing_weights(vm, layer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f'weights_{vm.name}_layer{layer}'
    np.save(out / f'{stem}.npy', arr)
    plt = _plt()
    if arr.ndim == 3:  # Strip-MLP: (2, n, n)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
        for ax, mat, title in zip(axes, arr, ('row strip', 'column strip'), strict=True):
            lim = float(np.abs(mat).max()) or 1.0
            im = ax.imshow(mat, cmap='RdBu_r', vmin=-lim, vmax=lim)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel('input token', fontsize=8)
            ax.set_ylabel('output token', fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label('mean weight', fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 0.93))
    else:
        gh, gw = arr.shape[:2]
        ys = sorted({round(v) for v in np.linspace(0, gh - 1, min(gh, max_side))})
        xs = sorted({round(v) for v in np.linspace(0, gw - 1, min(gw, max_side))})
        height = 1.3 * len(ys) + 0.9
        fig, axes = plt.subplots(len(ys), len(xs), figsize=(1.3 * len(xs) + 0.8, height), squeeze=False)
        fig.subplots_adjust(top=1 - 0.6 / height)  # the suptitle's room, whatever the grid (the default is 12%)
        lim = float(np.abs(arr).max()) or 1.0
        for r, i in enumerate(ys):
            for c, j in enumerate(xs):
                ax = axes[r, c]
                im = ax.imshow(arr[i, j], cmap='RdBu_r', vmin=-lim, vmax=lim)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f'out ({i},{j})', fontsize=7)
        fig.colorbar(im, ax=axes, fraction=0.03, pad=0.02).set_label('weight (input patch)', fontsize=8)
    fig.suptitle(f'{vm.name} {name}: {desc}', fontsize=9)
    png = out / f'{stem}.png'
    fig.savefig(png, dpi=100, bbox_inches='tight')
    plt.close(fig)
    return dict(weights=arr, png=png, npy=out / f'{stem}.npy', layer=name)


# --- Grad-CAM --------------------------------------------------------------------------------------------------

def grad_cam(vm: VizModel, x: torch.Tensor, target: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM maps at the last trunk unit for a batch ``x``: ReLU(sum_c mean_hw(dy/dA_c) * A_c), upsampled to the
    input size and scaled to [0, 1] per image. ``target`` None: each image's top class.

    Returns:
        The (N, H, W) maps and the (N, num_classes) probabilities.
    """
    model = vm.model
    x = x.to(next(model.parameters()).device)
    unit = model.trunk()[-1]
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i, output):
        store['a'] = output[0] if isinstance(output, tuple) else output  # Strip-MLP stages also return their skips

    handle = unit.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    probs = logits.float().softmax(-1).detach()
    idx = probs.argmax(-1) if target is None else torch.full((x.shape[0],), target)
    a = store['a']
    (g,) = torch.autograd.grad(logits.gather(1, idx[:, None]).sum(), a)  # images are independent in eval mode
    if a.ndim == 3:  # isotropic tokens (B, N, C): to the patch grid
        a, g = (model.format_intermediate(t, 'NCHW') for t in (a, g))
    cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode='bilinear', align_corners=False)[:, 0]
    cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return cam.cpu().numpy(), probs.cpu()


def _unique_stem(stem: str, path: Path, used: set[str]) -> str:
    """``stem``, or with the parent folder's name (then a count) when an earlier image took it: the images of an
    image folder's classes often share names (``cat/0001.jpg``, ``dog/0001.jpg``)."""
    if stem in used:
        stem = f'{stem}_{path.parent.name}'
    base, n = stem, 1
    while stem in used:
        n += 1
        stem = f'{base}_{n}'
    used.add(stem)
    return stem


def plot_cam(vm: VizModel, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike, topk: int = 5) -> list:
    """One Grad-CAM overlay per image (``cam_<image stem>.png`` and the (H, W) map as ``.npy``; a stem already
    taken gets the folder's name) with the top-k classes and probabilities beside it.

    Returns:
        ``[(png, npy, [(class, probability), ...]), ...]``, one entry per image.
    """
    from .engine.inference import find_images
    files = find_images(images)
    x = load_images(files, vm.data_cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    results = []
    used: set[str] = set()
    k = max(1, min(topk, len(vm.classes)))
    for f, xi in zip(files, x, strict=True):
        cam, probs = grad_cam(vm, xi[None])
        p, ix = probs[0].topk(k)
        top = [(vm.classes[i] if i < len(vm.classes) else str(i), float(q)) for q, i in zip(p, ix.tolist(),
                                                                                              strict=True)]
        stem = _unique_stem(f'cam_{Path(f).stem}', Path(f), used)
        np.save(out / f'{stem}.npy', cam[0].astype(np.float32))
        fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(10, 3.4), gridspec_kw=dict(width_ratios=[1, 1, 0.9]))
        img = _unnormalize(xi, vm.data_cfg)
        ax0.imshow(img)
        ax0.set_title('input', fontsize=9)
        ax1.imshow(img)
        im = ax1.imshow(cam[0], cmap='jet', alpha=0.5, vmin=0, vmax=1)
        ax1.set_title(f'Grad-CAM for {top[0][0]!r}', fontsize=9)
        for ax in (ax0, ax1):
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=ax1, fraction=0.046, pad=0.04).set_label('class activation (scaled)', fontsize=8)
        names = [t[0][:24] for t in top][::-1]
        ax2.barh(range(k), [100 * t[1] for t in top][::-1], color='tab:blue')
        ax2.set_yticks(range(k), names, fontsize=8)
        ax2.set_xlim(0, 100)
        ax2.set_xlabel('probability (%)', fontsize=8)
        ax2.set_title(f'top-{k}', fontsize=9)
        fig.suptitle(f'{vm.name}: {Path(f).name}', fontsize=10)
        fig.tight_layout()
        png = out / f'{stem}.png'
        fig.savefig(png, dpi=100)
        plt.close(fig)
        results.append((png, out / f'{stem}.npy', top))
    return results


# --- features --------------------------------------------------------------------------------------------------

def feature_pca(feat: torch.Tensor) -> np.ndarray:
    """The first three principal components of a (C, h, w) map's per-position features as an (h, w, 3) image, each
    component scaled to [0, 1] (fewer than three components: the missing ones are 0)."""
    c, h, w = feat.shape
    z = feat.detach().double().reshape(c, h * w).T  # h*w samples, C features
    z = z - z.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(z, full_matrices=False)
    k = min(3, vh.shape[0])
    proj = z @ vh[:k].T  # h*w, k
    lo, hi = proj.amin(0), proj.amax(0)
    proj = (proj - lo) / (hi - lo).clamp_min(1e-12)
    rgb = torch.zeros(h * w, 3, dtype=torch.float64)
    rgb[:, :k] = proj
    return rgb.reshape(h, w, 3).float().numpy()


def plot_features(vm: VizModel, image: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """The image and, for each stage, its features' first three principal components as RGB. Writes
    ``features_<image stem>.png`` and one ``features_<image stem>_stage<k>.npy`` ((h, w, 3)) per stage."""
    x = load_images([image], vm.data_cfg)
    with torch.no_grad():
        feats = vm.model.forward_intermediates(x, intermediates_only=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f'features_{Path(image).stem}'
    maps = [feature_pca(f[0]) for f in feats]
    npys = []
    for s, m in enumerate(maps):
        npys.append(out / f'{stem}_stage{s}.npy')
        np.save(npys[-1], m)
    plt = _plt()
    n = len(maps) + 1
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    axes.flat[0].imshow(_unnormalize(x[0], vm.data_cfg))
    axes.flat[0].set_title('input', fontsize=9)
    for ax, (s, m), f in zip(axes.flat[1:], enumerate(maps), feats, strict=False):
        ax.imshow(m, interpolation='nearest')
        ax.set_title(f'{_unit_word(vm.model)} {s}: {f.shape[1]}ch, {f.shape[2]}x{f.shape[3]}', fontsize=8)
    fig.suptitle(f'{vm.name}: first 3 principal components of each {_unit_word(vm.model)}\'s features (R, G, B)',
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    png = out / f'{stem}.png'
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return dict(maps=maps, png=png, npy=npys)
