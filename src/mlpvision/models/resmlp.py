"""ResMLP: Feedforward networks for image classification with data-efficient training.

Paper: Touvron et al., arXiv:2105.03404 (Table 1: S12/S24/S36/B24 at patch 16).
Official code: facebookresearch/deit@7e160fe43f0252d17191b71cbb5826254114ea5b, ``resmlp_models.py``.

A patch-embedding conv, then blocks of
``x = x + DP(ls1 * Linear_N(Aff1(x)^T)^T)`` (one Linear(N, N) across the N patches, shared by all channels) and
``x = x + DP(ls2 * MLP(Aff2(x)))``, a final Affine, the mean over patches and a Linear head. ``Aff`` is a
per-channel ``alpha * x + beta`` with 1-D parameters; LayerScale init is 0.1 (depth 12), 1e-5 (24), 1e-6 (36, B24),
as in the official factories; drop path is constant over depth (official ``dpr = [drop_path_rate] * depth``).

Deploy form (``deploy=True`` / ``mlpvision.reparameterize``): the paper says the Affine transforms can be absorbed
into the adjacent linear layers at inference; it is not in the official code, so it is derived here:

* channel branch: Aff2 folds into fc1 (``W1 * alpha``, ``b1 + W1 @ beta``) and ls2 into fc2;
* token branch: ``ls1 * (A (alpha x + beta) + b)`` = ``s * (A x) + B`` with the per-channel scale
  ``s = ls1 * alpha1`` and an N x C bias ``B = ls1 * (rowsum(A) beta1^T + b 1^T)``;
* the final Affine folds into the head (the mean over patches commutes with it), so a deploy model with a
  classifier has no Affine left and its pooled pre-logits are the un-normed features.

Deviations from the official code: token mixing is computed as ``A @ x`` (a batched matmul, no transposes), equal up
to float rounding; in fp32 CPU inference the channel MLP runs through oneDNN with GELU fused
(:mod:`mlpvision.layers.fast_linear`), also equal up to float rounding; the model checks its input size and channels
with a clear error instead of an assert; key names follow timm (``stem.proj``, ``linear_tokens``, ``mlp_channels``,
``ls1``/``ls2``); ``checkpoint_filter_fn`` maps the official and timm names.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from .._checkpoint import register_checkpoint_filter
from ..layers.fast_linear import mlp_forward
from ._base import check_input, to_2tuple_int
from ._registry import ModelMeta, generate_cfgs, register_model

__all__ = ['ResMLP', 'ResMLPBlock', 'Affine']

_OFFICIAL = 'facebookresearch/deit@7e160fe43f0252d17191b71cbb5826254114ea5b:resmlp_models.py'


class Affine(nn.Module):
    """Per-channel ``alpha * x + beta`` over the last dimension (channels-last tokens, B, N, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta, self.alpha, x)


def fold_channel_mlp(alpha, beta, w1, b1, w2, b2, gamma):
    """fc2'(act(fc1'(x))) == gamma * fc2(act(fc1(alpha * x + beta))): the folded (w1, b1, w2, b2)."""
    return w1 * alpha, b1 + w1 @ beta, w2 * gamma[:, None], b2 * gamma


def fold_token_mixing(alpha, beta, a, b, gamma):
    """s * (A x) + B == gamma * (A (alpha x + beta) + b) for x of shape (N, C): returns (s, B)."""
    return gamma * alpha, gamma * (a.sum(1)[:, None] * beta + b[:, None])


class ResMLPBlock(nn.Module):
    """Cross-patch linear + channel MLP with Affine pre-norms and LayerScale. Input (B, N, C)."""

    def __init__(
            self,
            dim: int,
            num_patches: int,
            mlp_ratio: float = 4.,
            init_values: float = 1e-4,
            drop: float = 0.,
            drop_path: float = 0.,
            act_layer: type[nn.Module] = nn.GELU,
            deploy: bool = False,
    ) -> None:
        super().__init__()
        self.deploy = deploy
        hidden = int(dim * mlp_ratio)
        if deploy:
            self.linear_tokens = nn.Linear(num_patches, num_patches, bias=False)
            self.token_scale = nn.Parameter(torch.ones(dim))
            self.token_bias = nn.Parameter(torch.zeros(num_patches, dim))
        else:
            self.norm1 = Affine(dim)
            self.linear_tokens = nn.Linear(num_patches, num_patches)
            self.ls1 = nn.Parameter(init_values * torch.ones(dim))
            self.norm2 = Affine(dim)
            self.ls2 = nn.Parameter(init_values * torch.ones(dim))
        self.mlp_channels = Mlp(dim, hidden, act_layer=act_layer, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            t = torch.matmul(self.linear_tokens.weight, x)  # (N, N) @ (B, N, C) -> B, N, C
            x = x + self.drop_path(torch.addcmul(self.token_bias, t, self.token_scale))
            return x + self.drop_path(mlp_forward(self.mlp_channels, x))
        t = torch.matmul(self.linear_tokens.weight, self.norm1(x))  # B, N, C
        t = t + self.linear_tokens.bias[:, None]
        x = x + self.drop_path(self.ls1 * t)
        return x + self.drop_path(self.ls2 * mlp_forward(self.mlp_channels, self.norm2(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.deploy:
            return
        mlp = self.mlp_channels
        w1, b1, w2, b2 = fold_channel_mlp(self.norm2.alpha, self.norm2.beta, mlp.fc1.weight, mlp.fc1.bias,
                                          mlp.fc2.weight, mlp.fc2.bias, self.ls2)
        mlp.fc1.weight.copy_(w1)
        mlp.fc1.bias.copy_(b1)
        mlp.fc2.weight.copy_(w2)
        mlp.fc2.bias.copy_(b2)
        scale, bias = fold_token_mixing(self.norm1.alpha, self.norm1.beta, self.linear_tokens.weight,
                                        self.linear_tokens.bias, self.ls1)
        n = self.linear_tokens.in_features
        weight = self.linear_tokens.weight
        self.linear_tokens = nn.Linear(n, n, bias=False, device=weight.device, dtype=weight.dtype)
        self.linear_tokens.weight.copy_(weight)
        self.token_scale = nn.Parameter(scale.clone())
        self.token_bias = nn.Parameter(bias.clone())
        for name in ('norm1', 'norm2', 'ls1', 'ls2'):
            delattr(self, name)
        self.deploy = True


class ResMLP(nn.Module):
    """ResMLP (isotropic; tokens (B, N, C) inside, N = (H/p) * (W/p)), built for one input size."""

    def __init__(
            self,
            num_classes: int = 1000,
            img_size: int | tuple[int, int] = 224,
            in_chans: int = 3,
            patch_size: int = 16,
            embed_dim: int = 384,
            depth: int = 12,
            mlp_ratio: float = 4.,
            init_values: float = 1e-4,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer: type[nn.Module] = nn.GELU,
            deploy: bool = False,
    ) -> None:
        """
        Args:
            img_size: the input size the token-mixing layers are built for (weights depend on it).
            drop_rate: dropout inside the channel MLPs (where the official code applies ``drop_rate``).
            drop_path_rate: stochastic depth, the same rate in every block (official).
            deploy: build the inference form (Affine and LayerScale folded into the linear layers).
        """
        super().__init__()
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '' for ResMLP, got {global_pool!r}.")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.img_size = to_2tuple_int(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f'img_size {self.img_size} must be a multiple of patch_size {patch_size}.')
        self.patch_size = patch_size
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.deploy = deploy
        self.grad_checkpointing = False

        self.stem = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.blocks = nn.Sequential(*[
            ResMLPBlock(embed_dim, num_patches, mlp_ratio, init_values, drop_rate, drop_path_rate, act_layer, deploy)
            for _ in range(depth)])
        # the deploy form folds the final Affine into the head (only possible when there is a head)
        self.norm = nn.Identity() if deploy and num_classes > 0 else Affine(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f'blocks.{i}') for i in range(depth)]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official: trunc_normal(0.02) on every Linear, zero bias; the patch conv keeps PyTorch's default init
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # DeiT's optimizer (timm create_optimizer) skips every 1-D parameter and bias: Affine, LayerScale, biases;
        # the deploy form's N x C token bias is a bias too
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n.endswith('token_bias')}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^stem', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}.")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.in_chans, img_size=self.img_size, model_name=type(self).__name__)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)  # B, N, C
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

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
        """Block outputs as NCHW maps at stride ``patch_size`` (or NLC tokens with ``output_fmt='NLC'``)."""
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.check_input(x)
        b = x.shape[0]
        h, w = self.grid_size
        x = self.stem(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            x = blk(x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                if output_fmt == 'NCHW':
                    y = y.transpose(1, 2).reshape(b, -1, h, w)  # B, N, C -> B, C, H/p, W/p
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the final Affine into the head (the blocks fold themselves)."""
        if self.deploy:
            return
        if isinstance(self.norm, Affine) and isinstance(self.head, nn.Linear):
            w, b = fold_head(self.norm.alpha, self.norm.beta, self.head.weight, self.head.bias)
            self.head.weight.copy_(w)
            self.head.bias.copy_(b)
            self.norm = nn.Identity()
        for blk in self.blocks:
            blk.reparameterize()
        self.deploy = True


def fold_head(alpha, beta, w, b):
    """head'(mean(x)) == head(mean(alpha * x + beta))."""
    return w * alpha, b + w @ beta


def _official_to_ours(k: str) -> str:
    k = k.replace('patch_embed.', 'stem.')
    k = re.sub(r'^blocks\.(\d+)\.attn\.', r'blocks.\1.linear_tokens.', k)
    k = re.sub(r'^blocks\.(\d+)\.mlp\.', r'blocks.\1.mlp_channels.', k)
    k = re.sub(r'^blocks\.(\d+)\.gamma_1', r'blocks.\1.ls1', k)
    k = re.sub(r'^blocks\.(\d+)\.gamma_2', r'blocks.\1.ls2', k)
    return k


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ResMLP) -> dict[str, torch.Tensor]:
    """Map an official (deit ``resmlp_models.py``), timm (``resmlp_*_224``) or mlpvision state_dict onto our key names
    (either form; the loader folds a train-form checkpoint for ``deploy=True``)."""
    state_dict = state_dict.get('model', state_dict)
    out = {}
    for k, v in state_dict.items():
        k = _official_to_ours(k)
        if re.search(r'(norm\d?)\.(alpha|beta)$', k) and v.ndim == 3:
            v = v.reshape(-1)  # timm stores Affine as (1, 1, C)
        out[k] = v
    return out


register_checkpoint_filter(ResMLP, checkpoint_filter_fn)


def _create_resmlp(variant: str, pretrained: bool = False, **kwargs) -> ResMLP:
    depth = kwargs.get('depth', 12)
    step = max(depth // 4, 1)
    out_indices = kwargs.pop('out_indices', tuple(range(step - 1, depth, step))[-4:])
    return build_model_with_cfg(
        ResMLP, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs)


def _cfg(meta: ModelMeta, **kwargs) -> dict:
    # DeiT ResMLP README: evaluation resizes to int(224 / 0.9) and centre-crops 224, bicubic, ImageNet mean/std
    return dict(
        url='', num_classes=1000, input_size=(3, 224, 224), pool_size=None, fixed_input_size=True,
        crop_pct=0.9, interpolation='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv='stem.proj', classifier='head', license='apache-2.0', meta=meta, **kwargs)


_PAPER = 'arXiv:2105.03404'
default_cfgs = generate_cfgs({
    'resmlp_s12.untrained': _cfg(ModelMeta(
        paper=f'{_PAPER} Table 1', official=_OFFICIAL, params=15_350_872, gmacs=3.010,
        params_paper='15.4M', gmacs_paper=3.0, top1_paper=76.6)),
    'resmlp_s24.untrained': _cfg(ModelMeta(
        paper=f'{_PAPER} Table 1', official=_OFFICIAL, params=30_020_680, gmacs=5.961,
        params_paper='30.0M', gmacs_paper=6.0, top1_paper=79.4)),
    'resmlp_s36.untrained': _cfg(ModelMeta(
        paper=f'{_PAPER} Table 1 / deit README_resmlp.md', official=_OFFICIAL, params=44_690_488, gmacs=8.913,
        params_paper='44.7M', gmacs_paper=8.9, top1_paper=79.7)),
    'resmlp_b24.untrained': _cfg(ModelMeta(
        paper=f'{_PAPER} Table 1 (B24, patch 16)', official=_OFFICIAL + ' (resmlp_models with patch 16)',
        params=115_736_776, gmacs=23.021, params_paper='116M', gmacs_paper=23.0, top1_paper=81.0,
        notes='not a factory in the official repo; built from resmlp_models(patch_size=16, embed_dim=768, depth=24)')),
    'resmlp_b24_p8.untrained': _cfg(ModelMeta(
        paper='deit README_resmlp.md (resmlpB_24)', official=_OFFICIAL + ':resmlpB_24', params=129_138_280,
        gmacs=100.231, params_paper='129M', gmacs_paper=100.0, top1_paper=83.6,
        notes='the released resmlpB_24 (patch 8); 83.6 is the distilled model, ~81.0 without distillation')),
})


@register_model
def resmlp_s12(pretrained: bool = False, **kwargs) -> ResMLP:
    """ResMLP-S12 (paper Table 1: 15.4M params, 3.0 GMACs, 76.6% top-1)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, init_values=0.1)
    return _create_resmlp('resmlp_s12', pretrained, **dict(model_args, **kwargs))


@register_model
def resmlp_s24(pretrained: bool = False, **kwargs) -> ResMLP:
    """ResMLP-S24 (paper Table 1: 30.0M params, 6.0 GMACs, 79.4% top-1)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=24, init_values=1e-5)
    return _create_resmlp('resmlp_s24', pretrained, **dict(model_args, **kwargs))


@register_model
def resmlp_s36(pretrained: bool = False, **kwargs) -> ResMLP:
    """ResMLP-S36 (44.7M params, 8.9 GMACs, 79.7% top-1; the deit README row for S36 is wrong)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=36, init_values=1e-6)
    return _create_resmlp('resmlp_s36', pretrained, **dict(model_args, **kwargs))


@register_model
def resmlp_b24(pretrained: bool = False, **kwargs) -> ResMLP:
    """ResMLP-B24 at patch 16 (paper Table 1: 116M params, 23.0 GMACs, 81.0% top-1)."""
    model_args = dict(patch_size=16, embed_dim=768, depth=24, init_values=1e-6)
    return _create_resmlp('resmlp_b24', pretrained, **dict(model_args, **kwargs))


@register_model
def resmlp_b24_p8(pretrained: bool = False, **kwargs) -> ResMLP:
    """ResMLP-B24/8, the released ``resmlpB_24`` (patch 8: 129M params, 100 GMACs)."""
    model_args = dict(patch_size=8, embed_dim=768, depth=24, init_values=1e-6)
    return _create_resmlp('resmlp_b24_p8', pretrained, **dict(model_args, **kwargs))
