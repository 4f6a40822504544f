"""The model contract shared by every mlpvision family.

:class:`BackboneBase` holds what every model shares, written once: a ``stem``, a trunk (an ``nn.Sequential`` of
feature units, each one entry of ``feature_info``), a final ``norm`` and a head, and from them ``forward``,
``forward_intermediates``, ``prune_intermediate_layers`` and ``set_grad_checkpointing``. Two layouts build on it:

* :class:`PyramidNet`, the four-stage, NCHW families (AS-MLP, Hire-MLP, Strip-MLP, RepMLP-Res50, RepMLPNet): a
  subclass builds ``stem``, ``stages`` (an ``nn.Sequential`` of four stages), ``norm`` (the final norm, applied to the
  NCHW map, or ``nn.Identity``) and calls :meth:`PyramidNet._init_head`;
* :class:`IsotropicNet`, a sequence of blocks on (B, N, C) tokens at one resolution (ResMLP; MLP-Mixer-like models,
  as timm's ``MlpMixer``): a subclass builds ``stem`` (a patch embedding to tokens), ``blocks``, ``norm`` (per token)
  and calls :meth:`IsotropicNet._init_head` and :meth:`IsotropicNet._init_feature_info`; features are NCHW maps of
  the patch grid, or NLC tokens (``output_fmt='NLC'``), as in timm's ViT and MlpMixer.

Everything in timm's model contract then comes from here (``forward_features``, ``forward_head``,
``forward_intermediates``, ``prune_intermediate_layers``, ``reset_classifier``, ``set_grad_checkpointing``,
``group_matcher``), and timm's ``features_only=True`` from ``forward_intermediates`` (``feature_cls='getter'``).

Input checks live in :func:`check_input` so every family reports a wrong channel count or size the same way. It is
an FX leaf (``torch.fx.wrap`` here and in every family module that calls it, and timm's
``register_notrace_function`` for timm's tracer): its Python control flow on the input's shape runs at call time, so
``torch.fx`` tracing and feature extraction (``timm.models._features_fx``, torchvision's
``create_feature_extractor``) keep the check in the graph instead of failing on it. It is ``torch.jit.ignore``-d for
TorchScript (no ``from __future__ import annotations`` in the model files either: TorchScript cannot read string
annotations).
"""
from collections.abc import Sequence

import torch
import torch.fx
import torch.nn as nn
from timm.layers import ClassifierHead, get_device_dtype, register_notrace_function
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from .._checkpoint import model_name  # defined low in the layers: the checkpoint loader names models too
from ..errors import UsageError

__all__ = ['BackboneBase', 'PyramidNet', 'IsotropicNet', 'SequentialStage', 'prenorm_residual_forward', 'check_input',
           'to_2tuple_int', 'model_name', 'one_d_and_bias_params']


class BackboneBase(nn.Module):
    """stem -> trunk (an ``nn.Sequential`` of feature units) -> norm -> head: the contract written once.

    A layout subclass names its trunk in ``trunk_name`` (``'stages'`` or ``'blocks'``: the state_dict keys follow it)
    and adds what depends on the layout: the head (``_init_head``, ``forward_head``, ``get_classifier``,
    ``reset_classifier``), ``forward_features``, ``group_matcher`` and ``check_input``. ``forward_features`` is
    written per layout because TorchScript cannot reach an attribute by a name held in a variable.

    Class attributes:
        trunk_name: the attribute holding the trunk.
        norm_every_unit: whether the final norm fits every unit's output (a per-token norm of the one width of an
            isotropic model: ``forward_intermediates(norm=True)`` norms every intermediate, as timm's MlpMixer and
            ViT do) or only the last unit's (a pyramid's final norm has the last stage's channels).
        output_fmts: the ``output_fmt`` values ``forward_intermediates`` accepts (see ``format_intermediate``).
    """

    trunk_name = 'stages'
    norm_every_unit = False
    output_fmts = ('NCHW',)

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    @torch.jit.ignore
    def trunk(self) -> nn.Sequential:
        """The ``nn.Sequential`` of feature units (``feature_info`` lists one entry per unit)."""
        return getattr(self, self.trunk_name)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for s in self.trunk():
            if hasattr(s, 'grad_checkpointing'):
                s.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(self.check_input(x))  # the check returns x: it stays on the data path of FX graphs

    def forward_stage(
            self, stage: nn.Module, x: torch.Tensor, carry: list[torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run one trunk unit (a stage or a block). ``carry`` holds what a stage hands to later ones besides the
        feature map (Strip-MLP's multi-scale skips); the plain stages and blocks here hand nothing."""
        return stage(x), carry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def format_intermediate(self, x: torch.Tensor, output_fmt: str) -> torch.Tensor:
        """A unit's output as ``forward_intermediates`` returns it; the units here already produce NCHW maps."""
        return x

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Trunk unit outputs (stage outputs at strides 4, 8, 16, 32 for the pyramids here; block outputs at the
        patch stride for the isotropic models) and, unless ``intermediates_only``, the final normed features.

        ``norm=True`` applies the final norm to the intermediates it fits (all of them when ``norm_every_unit``,
        else the last unit's only, since the other stages have no norm of their own in these architectures).
        """
        if output_fmt not in self.output_fmts:
            raise ValueError(f"output_fmt must be {' or '.join(map(repr, self.output_fmts))} for "
                             f"{type(self).__name__}, got {output_fmt!r}.")
        trunk = self.trunk()
        take_indices, max_index = feature_take_indices(len(trunk), indices)
        intermediates = []
        x = self.forward_stem(x)
        last = len(trunk) - 1
        units = trunk if torch.jit.is_scripting() or not stop_early else trunk[:max_index + 1]
        carry: list[torch.Tensor] = []
        for i, unit in enumerate(units):
            x, carry = self.forward_stage(unit, x, carry)
            if i in take_indices:
                y = self.norm(x) if norm and (self.norm_every_unit or i == last) else x
                intermediates.append(self.format_intermediate(y, output_fmt))
        if intermediates_only:
            return intermediates
        if self.norm_every_unit or len(units) == len(trunk):
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        trunk = self.trunk()
        take_indices, max_index = feature_take_indices(len(trunk), indices)
        setattr(self, self.trunk_name, trunk[:max_index + 1])
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


class SequentialStage(nn.Module):
    """``downsample`` then ``blocks`` (an nn.Sequential), with optional gradient checkpointing over the blocks."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def prenorm_residual_forward(block: nn.Module, mixer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x + DP(mixer(norm1(x)))``, then ``x + DP(mlp(norm2(x)))`` for a block with ``norm1``, ``norm2``,
    ``drop_path``, a :class:`mlpvision.layers.Mlp` as ``mlp`` and a :class:`mlpvision.layers.ProjectedMixer` as
    ``mixer``. Without stochastic depth the residual sums are handed to them as ``shortcut``, which they add inside
    their last layer (fused into oneDNN's conv in CPU inference)."""
    if isinstance(block.drop_path, nn.Identity) or not block.training:
        x = mixer(block.norm1(x), shortcut=x)
        return block.mlp(block.norm2(x), shortcut=x)
    x = x + block.drop_path(mixer(block.norm1(x)))
    return x + block.drop_path(block.mlp(block.norm2(x)))


def to_2tuple_int(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def one_d_and_bias_params(model: nn.Module) -> set[str]:
    """Names of every 1-D parameter and every ``.bias``: what the DeiT- and Swin-based official optimizers (and
    timm's ``param_groups_weight_decay``) exclude from weight decay."""
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith('.bias')}


@register_notrace_function
@torch.jit.ignore
def check_input(
        x: torch.Tensor,
        in_chans: int,
        img_size: tuple[int, int] | None = None,
        multiple: int | tuple[int, int] | None = None,
        model_name: str = 'this model',
        min_size: int | None = None,
) -> torch.Tensor:
    """Raise ValueError naming the problem and the fix when ``x`` does not fit the model; else return ``x``.

    Callers go on with the returned tensor (``x = check_input(x, ...)``), so that in a traced FX graph the check is
    on the data path and not removed as dead code.

    Args:
        in_chans: channels the model was built for.
        img_size: the only (H, W) the model accepts (fixed-size models), or None.
        multiple: H and W must be multiples of this (or of (mh, mw)), or None.
        min_size: H and W must be at least this, or None.
    """
    if x.ndim != 4:
        raise UsageError(f'{model_name} expects a batch of images (B, C, H, W); got shape {tuple(x.shape)}.')
    c, h, w = x.shape[1:]
    if c != in_chans:
        raise UsageError(
            f'{model_name} was built for {in_chans}-channel input but got {c} channels (input shape {tuple(x.shape)}). '
            f'Convert the images, or build the model with in_chans={c}.')
    if img_size is not None and (h, w) != tuple(img_size):
        raise UsageError(
            f'{model_name} was built for {img_size[0]}x{img_size[1]} input but got {h}x{w}. '
            f'Resize the input, or build the model with img_size=({h}, {w}) (weights sized for another input size '
            f'will not load).')
    if multiple is not None:
        mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
        if h % mh or w % mw:
            raise UsageError(
                f'{model_name} needs input height a multiple of {mh} and width a multiple of {mw}; got {h}x{w}. '
                f'Resize or pad the input (e.g. to {-(-h // mh) * mh}x{-(-w // mw) * mw}).')
    if min_size is not None and min(h, w) < min_size:
        raise UsageError(f'{model_name} needs input of at least {min_size}x{min_size} pixels, got {h}x{w}. Upsample or '
                         f'pad the input.')
    return x


torch.fx.wrap('check_input')  # an FX leaf wherever this module's code calls it (PyramidNet.check_input)


class PyramidNet(BackboneBase):
    """Base for four-stage NCHW backbones: stem -> stages -> norm -> (avg pool, dropout, fc).

    Subclasses set ``stem`` (a module), ``stages`` (an ``nn.Sequential``; Strip-MLP's, whose stages also pass skips
    on, an ``nn.ModuleList`` with its own ``forward_features``) and ``norm`` (a module); they are not
    declared as class annotations, which TorchScript would read as attribute types and cannot type as modules.
    """

    def _init_head(self, num_features: int, num_classes: int, global_pool: str = 'avg', drop_rate: float = 0.) -> None:
        # built inside the constructor's factory_scope, so on the model's device and in its dtype
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.drop_rate = drop_rate
        self.head = ClassifierHead(num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

    # --- input ---------------------------------------------------------------------------------------------------
    @torch.jit.ignore  # Python (the error message reads the class); TorchScript calls back into it
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Raise ValueError when ``x`` does not fit, else return it; families override to add size rules."""
        return check_input(x, self.in_chans, model_name=type(self).__name__)

    # --- timm contract -------------------------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new ``num_classes`` head (0: none) on the model's device and in its dtype (the model's, not the old
        head's: after ``reset_classifier(0)`` the head has no parameter to take them from)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, **get_device_dtype(self))
        self.head.train(self.training)  # timm's contract: the new head follows its parent's mode too

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)


class IsotropicNet(BackboneBase):
    """Base for isotropic token models: stem (patch embedding) -> blocks on (B, N, C) tokens -> norm -> token mean ->
    (dropout, Linear head), with timm ``MlpMixer``'s module names (``stem``, ``blocks``, ``norm``, ``head``).

    Built for one input size (token-mixing layers are sized by the number of patches): a subclass sets ``in_chans``,
    ``img_size`` and ``grid_size`` (the patch grid, H/p x W/p), builds ``stem``, ``blocks`` (an ``nn.Sequential``) and
    ``norm`` (a per-token norm, or ``nn.Identity``), then calls :meth:`_init_head` and :meth:`_init_feature_info`.
    """

    trunk_name = 'blocks'
    norm_every_unit = True
    output_fmts = ('NCHW', 'NLC')

    def _init_head(
            self,
            num_features: int,
            num_classes: int,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        """``drop_rate`` is dropout on the pooled features before the head (timm MlpMixer's ``head_drop``)."""
        self._check_global_pool(global_pool)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = num_features
        self.head_drop = nn.Dropout(drop_rate)
        self.head = (nn.Linear(num_features, num_classes, device=device, dtype=dtype) if num_classes > 0
                     else nn.Identity())

    def _init_feature_info(self, reduction: int) -> None:
        """One entry per block: ``num_features`` channels at stride ``reduction`` (the patch size)."""
        self.feature_info = [dict(num_chs=self.num_features, reduction=reduction, module=f'blocks.{i}')
                             for i in range(len(self.blocks))]

    def _check_global_pool(self, global_pool: str) -> None:
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '' for {type(self).__name__}, got {global_pool!r}.")

    @torch.jit.ignore  # Python (the error message reads the class); TorchScript calls back into it
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Raise ValueError when ``x`` (B, C, H, W) does not fit the built size and channels, else return it."""
        return check_input(x, self.in_chans, img_size=self.img_size, model_name=type(self).__name__)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^stem', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self._check_global_pool(global_pool)
            self.global_pool = global_pool
        # on the model's device and dtype, not the defaults (a double() or meta-device model keeps its kind)
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)  # timm's contract: the new head follows its parent's mode too

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)  # B, N, C
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=1)  # B, N, C -> B, C
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def format_intermediate(self, x: torch.Tensor, output_fmt: str) -> torch.Tensor:
        """NLC tokens as they are, or (``'NCHW'``) a map of the patch grid."""
        if output_fmt == 'NCHW':
            h, w = self.grid_size
            return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)  # B, N, C -> B, C, H/p, W/p
        return x
