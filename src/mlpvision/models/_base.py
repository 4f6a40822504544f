"""The model contract shared by every mlpvision family.

:class:`PyramidNet` is the base of the four-stage, NCHW families (AS-MLP, Hire-MLP, Strip-MLP, RepMLP-Res50,
RepMLPNet): a subclass builds ``stem``, ``stages`` (an ``nn.Sequential`` of four stages), ``norm`` (the final norm,
applied to the NCHW map, or ``nn.Identity``) and calls :meth:`PyramidNet._init_head`; everything in timm's model
contract then comes from here (``forward_features``, ``forward_head``, ``forward_intermediates``,
``prune_intermediate_layers``, ``reset_classifier``, ``set_grad_checkpointing``, ``group_matcher``).

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

from ..layers.fast_linear import conv_mlp_forward

__all__ = ['PyramidNet', 'SequentialStage', 'prenorm_residual_forward', 'check_input', 'to_2tuple_int', 'model_name',
           'one_d_and_bias_params']


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
    ``drop_path`` and a timm ``Mlp`` of 1x1 convs as ``mlp``; ``mixer`` accepts ``residual=``. Without stochastic
    depth the residual sums go into the mixer's and the MLP's last convs (fused there on the channels-last CPU
    inference path of :mod:`mlpvision.layers.fast_linear`)."""
    if isinstance(block.drop_path, nn.Identity) or not block.training:
        x = mixer(block.norm1(x), residual=x)
        return conv_mlp_forward(block.mlp, block.norm2(x), residual=x)
    x = x + block.drop_path(mixer(block.norm1(x)))
    return x + block.drop_path(block.mlp(block.norm2(x)))


def to_2tuple_int(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def model_name(model: nn.Module) -> str:
    """The registered name (from the pretrained cfg) for error messages, else the class name."""
    return (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__


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
        raise ValueError(f'{model_name} expects a batch of images (B, C, H, W); got shape {tuple(x.shape)}.')
    c, h, w = x.shape[1:]
    if c != in_chans:
        raise ValueError(
            f'{model_name} was built for {in_chans}-channel input but got {c} channels (input shape {tuple(x.shape)}). '
            f'Convert the images, or build the model with in_chans={c}.')
    if img_size is not None and (h, w) != tuple(img_size):
        raise ValueError(
            f'{model_name} was built for {img_size[0]}x{img_size[1]} input but got {h}x{w}. '
            f'Resize the input, or build the model with img_size=({h}, {w}) (weights sized for another input size '
            f'will not load).')
    if multiple is not None:
        mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
        if h % mh or w % mw:
            raise ValueError(
                f'{model_name} needs input height a multiple of {mh} and width a multiple of {mw}; got {h}x{w}. '
                f'Resize or pad the input (e.g. to {-(-h // mh) * mh}x{-(-w // mw) * mw}).')
    if min_size is not None and min(h, w) < min_size:
        raise ValueError(f'{model_name} needs input of at least {min_size}x{min_size} pixels, got {h}x{w}. Upsample or '
                         f'pad the input.')
    return x


torch.fx.wrap('check_input')  # an FX leaf wherever this module's code calls it (PyramidNet.check_input)


class PyramidNet(nn.Module):
    """Base for four-stage NCHW backbones: stem -> stages -> norm -> (avg pool, dropout, fc).

    Subclasses set ``stem`` (a module), ``stages`` (an ``nn.Sequential``; Strip-MLP's, whose stages also pass skips
    on, an ``nn.ModuleList`` with its own ``forward_features``) and ``norm`` (a module); they are not
    declared as class annotations, which TorchScript would read as attribute types and cannot type as modules.
    """

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

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
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for s in self.stages:
            if hasattr(s, 'grad_checkpointing'):
                s.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new ``num_classes`` head (0: none) on the model's device and in its dtype (the model's, not the old
        head's: after ``reset_classifier(0)`` the head has no parameter to take them from)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, **get_device_dtype(self))

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(self.check_input(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return self.norm(x)

    def forward_stage(
            self, stage: nn.Module, x: torch.Tensor, carry: list[torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run one stage. ``carry`` holds what a stage hands to later ones besides the feature map (Strip-MLP's
        multi-scale skips); the plain stages here hand nothing."""
        return stage(x), carry

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (strides 4, 8, 16, 32 for the families here) and, unless ``intermediates_only``, the
        final normed feature map. ``norm=True`` applies the final norm to the last stage's output only, since the
        other stages have no norm of their own in these architectures."""
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW' for {type(self).__name__}, got {output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.forward_stem(x)
        last = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        carry: list[torch.Tensor] = []
        for i, stage in enumerate(stages):
            x, carry = self.forward_stage(stage, x, carry)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices
