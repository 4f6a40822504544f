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
(:class:`mlpvision.layers.Mlp`), also equal up to float rounding; the model checks its input size and channels
with a clear error instead of an assert; key names follow timm (``stem.proj``, ``linear_tokens``, ``mlp_channels``,
``ls1``/``ls2``); ``checkpoint_filter_fn`` maps the official and timm names.

timm's own ResMLP (``timm.models.mlp_mixer``: ``MlpMixer`` with ``ResBlock`` and ``Affine``, timm 1.0.31), which
``import mlpvision`` leaves registered beside ours, is the same network with the same module names; it differs in:

* names and sizes: ``resmlp_12_224`` / ``resmlp_24_224`` / ``resmlp_36_224`` / ``resmlp_big_24_224`` are our
  ``resmlp_s12`` / ``resmlp_s24`` / ``resmlp_s36`` / ``resmlp_b24_p8`` (the released B24 is patch 8); timm has no
  patch-16 B24 (``resmlp_b24``, the paper's Table 1 row); timm's depth argument is ``num_blocks``, ours ``depth``;
* initialisation: timm's ``resmlp_12_224`` starts LayerScale at 1e-4 (its ``ResBlock`` default), the official
  ``resmlp_12`` and ours at 0.1 (the deeper ones agree: 1e-5, 1e-6, 1e-6); timm draws Linear weights
  Xavier-uniform, the MLP biases from N(0, 1e-6), zeroes the head and LeCun-normal-inits the patch conv, where the
  official code and ours draw every Linear (head included) from trunc_normal(std 0.02) with zero biases and keep
  PyTorch's default patch conv;
* key shapes: timm stores each Affine's ``alpha``/``beta`` as (1, 1, C), ours as (C,) (as the official code);
  every key name is the same, so ``checkpoint_filter_fn`` only reshapes them (it also maps the official names);
* ``drop_rate``: timm's is dropout before the head (its MLP dropout is ``proj_drop_rate``); ours is the official
  dropout inside the channel MLPs, with no head dropout;
* ``features_only`` takes the last three blocks in timm, every ``depth // 4``-th block here (four maps);
* eval cfg: timm's ``crop_pct`` is 0.875, ours 0.9 (deit ``README_resmlp.md``); both bicubic, ImageNet mean/std;
* ours has the deploy form, the oneDNN CPU fast path, a ValueError for a wrong input size (timm asserts) and names
  the 1-D parameters in ``no_weight_decay``.

timm's hub weights load into ours and give timm's logits: the ``timm/resmlp_*_224.*`` files (timm's key names) and
the ``dl.fbaipublicfiles.com/deit`` ones (official names), every tag (distilled, in22k, DINO) alike, since each is
a tag of the same entrypoint, loaded strictly. Either through ``mlpvision.create_model('resmlp_s12',
checkpoint_path=...)`` or through timm's loader: ``timm.create_model('resmlp_s12', pretrained=True,
pretrained_cfg_overlay=dict(hf_hub_id='timm/resmlp_12_224.fb_in1k'))`` (tested offline with a local file on the
same loader, ``tests/test_resmlp.py``).

TorchScript does not apply: the channel MLPs (:class:`mlpvision.layers.Mlp`) hand themselves to the oneDNN dispatch of
:mod:`mlpvision.layers.fast_linear`, and TorchScript cannot pass a module as an argument (``torch.fx`` tracing works:
the blocks are FX leaves).
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
from timm.layers import DropPath, PatchEmbed, register_notrace_module, trunc_normal_

from .._checkpoint import register_checkpoint_filter
from ..layers import Mlp
from ._base import IsotropicNet, to_2tuple_int
from ._registry import ModelMeta, Weights, build_model, generate_cfgs, register_model

__all__ = ['ResMLP', 'ResMLPBlock', 'Affine']

_OFFICIAL = 'facebookresearch/deit@7e160fe43f0252d17191b71cbb5826254114ea5b:resmlp_models.py'


class Affine(nn.Module):
    """Per-channel ``alpha * x + beta`` over the last dimension (channels-last tokens, B, N, C)."""

    def __init__(self, dim: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta, self.alpha, x)


def fold_channel_mlp(alpha, beta, w1, b1, w2, b2, gamma):
    """fc2'(act(fc1'(x))) == gamma * fc2(act(fc1(alpha * x + beta))): the folded (w1, b1, w2, b2)."""
    return w1 * alpha, b1 + w1 @ beta, w2 * gamma[:, None], b2 * gamma


def fold_token_mixing(alpha, beta, a, b, gamma):
    """s * (A x) + B == gamma * (A (alpha x + beta) + b) for x of shape (N, C): returns (s, B)."""
    return gamma * alpha, gamma * (a.sum(1)[:, None] * beta + b[:, None])


@register_notrace_module  # an FX leaf: its channel MLP dispatches on the input (the oneDNN fast path)
class ResMLPBlock(nn.Module):
    """Cross-patch linear + channel MLP with Affine pre-norms and LayerScale. Input (B, N, C)."""

    # a constant for TorchScript, so it compiles only the branch of the form the block was built (or folded) in
    __constants__ = ['deploy']

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
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.deploy = deploy
        hidden = int(dim * mlp_ratio)
        if deploy:
            self.linear_tokens = nn.Linear(num_patches, num_patches, bias=False, **dd)
            self.token_scale = nn.Parameter(torch.ones(dim, **dd))
            self.token_bias = nn.Parameter(torch.zeros(num_patches, dim, **dd))
        else:
            self.norm1 = Affine(dim, **dd)
            self.linear_tokens = nn.Linear(num_patches, num_patches, **dd)
            self.ls1 = nn.Parameter(init_values * torch.ones(dim, **dd))
            self.norm2 = Affine(dim, **dd)
            self.ls2 = nn.Parameter(init_values * torch.ones(dim, **dd))
        self.mlp_channels = Mlp(dim, hidden, act_layer=act_layer, drop=drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            t = torch.matmul(self.linear_tokens.weight, x)  # (N, N) @ (B, N, C) -> B, N, C
            x = x + self.drop_path(torch.addcmul(self.token_bias, t, self.token_scale))
            return x + self.drop_path(self.mlp_channels(x))
        t = torch.matmul(self.linear_tokens.weight, self.norm1(x))  # B, N, C
        t = t + self.linear_tokens.bias[:, None]
        x = x + self.drop_path(self.ls1 * t)
        return x + self.drop_path(self.ls2 * self.mlp_channels(self.norm2(x)))

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


class ResMLP(IsotropicNet):
    """ResMLP (isotropic; tokens (B, N, C) inside, N = (H/p) * (W/p)), built for one input size.

    The model contract (features, intermediates as NCHW maps of the patch grid or NLC tokens, grad checkpointing,
    group_matcher, classifier reset) comes from :class:`~mlpvision.models._base.IsotropicNet`.
    """

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
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            img_size: the input size the token-mixing layers are built for (weights depend on it).
            drop_rate: dropout inside the channel MLPs (where the official code applies ``drop_rate``; timm's
                ``resmlp_*_224`` apply their ``drop_rate`` before the head instead).
            drop_path_rate: stochastic depth, the same rate in every block (official).
            deploy: build the inference form (Affine and LayerScale folded into the linear layers).
            device: where to create the parameters (timm's factory argument; ``'meta'`` builds without memory).
            dtype: the parameters' dtype (timm's factory argument).
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self._check_global_pool(global_pool)
        self.in_chans = in_chans
        self.img_size = to_2tuple_int(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f'img_size {self.img_size} must be a multiple of patch_size {patch_size}.')
        self.patch_size = patch_size
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.embed_dim = embed_dim
        self.deploy = deploy

        self.stem = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim, strict_img_size=False, **dd)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.blocks = nn.Sequential(*[
            ResMLPBlock(embed_dim, num_patches, mlp_ratio, init_values, drop_rate, drop_path_rate, act_layer, deploy,
                        **dd)
            for _ in range(depth)])
        # the deploy form folds the final Affine into the head (only possible when there is a head)
        self.norm = nn.Identity() if deploy and num_classes > 0 else Affine(embed_dim, **dd)
        self._init_head(embed_dim, num_classes, global_pool, **dd)
        self._init_feature_info(reduction=patch_size)
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
    # timm's names (its own checkpoint_filter_fn maps the official ones the same way) are already ours
    k = k.replace('patch_embed.', 'stem.')
    k = re.sub(r'^blocks\.(\d+)\.attn\.', r'blocks.\1.linear_tokens.', k)
    k = re.sub(r'^blocks\.(\d+)\.mlp\.', r'blocks.\1.mlp_channels.', k)
    k = re.sub(r'^blocks\.(\d+)\.gamma_1', r'blocks.\1.ls1', k)
    k = re.sub(r'^blocks\.(\d+)\.gamma_2', r'blocks.\1.ls2', k)
    return k


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ResMLP) -> dict[str, torch.Tensor]:
    """Map an official (deit ``resmlp_models.py``), timm (``resmlp_*_224``) or mlpvision state_dict onto ``model``.

    Official names (``patch_embed``, ``attn``, ``mlp``, ``gamma_1``/``gamma_2``) become ours; timm's keys are ours
    already, with each Affine's ``alpha``/``beta`` stored as (1, 1, C), reshaped here to (C,). Train-form checkpoints
    also load into a deploy-form model: the loader folds them (``mlpvision._checkpoint.load_weights``).
    """
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
    return build_model(
        ResMLP, variant, pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs)


def _cfg(meta: ModelMeta, **kwargs) -> dict:
    # DeiT ResMLP README: evaluation resizes to int(224 / 0.9) and centre-crops 224, bicubic, ImageNet mean/std
    return dict(
        url='', num_classes=1000, input_size=(3, 224, 224), pool_size=None, fixed_input_size=True,
        crop_pct=0.9, interpolation='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv='stem.proj', classifier='head', license='apache-2.0', meta=meta, **kwargs)


_PAPER = 'arXiv:2105.03404'
_META = dict(
    s12=ModelMeta(
        paper=f'{_PAPER} Table 1', official=_OFFICIAL, params=15_350_872, gmacs=3.010,
        params_paper='15.4M', gmacs_paper=3.0, top1_paper=76.6),
    s24=ModelMeta(
        paper=f'{_PAPER} Table 1', official=_OFFICIAL, params=30_020_680, gmacs=5.961,
        params_paper='30.0M', gmacs_paper=6.0, top1_paper=79.4),
    s36=ModelMeta(
        paper=f'{_PAPER} Table 1 / deit README_resmlp.md', official=_OFFICIAL, params=44_690_488, gmacs=8.913,
        params_paper='44.7M', gmacs_paper=8.9, top1_paper=79.7),
    b24_p8=ModelMeta(
        paper='deit README_resmlp.md (resmlpB_24)', official=_OFFICIAL + ':resmlpB_24', params=129_138_280,
        gmacs=100.231, params_paper='129M', gmacs_paper=100.0, top1_paper=83.6,
        notes='the released resmlpB_24 (patch 8); 83.6 is the distilled model, ~81.0 without distillation'),
)

# Releases: every file the deit repository links (direct downloads from dl.fbaipublicfiles.com, no hash published;
# the file names carry none). resmlp_models.py names the *_no_dist files (its default, pretrained=True) and the
# 24-layer DINO one; README_resmlp.md the distilled, 22k and both DINO files with their top-1. Tags as timm's.
_REPO = 'facebookresearch/deit@7e160fe43f0252d17191b71cbb5826254114ea5b'
_DL = 'https://dl.fbaipublicfiles.com/deit/'


def _weights(file: str, top1: float | None, top1_source: str, listed: str = 'resmlp_models.py') -> Weights:
    return Weights(source=f'{_REPO}:{listed}', host='direct', page=_DL + file, top1=top1, top1_source=top1_source,
                   license='apache-2.0')


_README = 'README_resmlp.md'
_DINO = 'k-NN top-1 of the DINO self-supervised weights (no fine-tuning; the head is not trained), ' + _README
default_cfgs = generate_cfgs({
    'resmlp_s12.fb_in1k': _cfg(_META['s12'], weights=_weights(
        'resmlp_12_no_dist.pth', 76.6, f'{_PAPER} Table 1 (no distillation)')),
    'resmlp_s12.fb_distilled_in1k': _cfg(_META['s12'], weights=_weights(
        'resmlp_12_dist.pth', 77.8, f'{_README} (distilled)', _README)),
    'resmlp_s12.fb_dino': _cfg(_META['s12'], weights=_weights('resmlp_12_dino.pth', 62.6, _DINO, _README)),
    'resmlp_s24.fb_in1k': _cfg(_META['s24'], weights=_weights(
        'resmlp_24_no_dist.pth', 79.4, f'{_PAPER} Table 1 (no distillation)')),
    'resmlp_s24.fb_distilled_in1k': _cfg(_META['s24'], weights=_weights(
        'resmlp_24_dist.pth', 80.8, f'{_README} (distilled)', _README)),
    'resmlp_s24.fb_dino': _cfg(_META['s24'], weights=_weights('resmlp_24_dino.pth', 69.4, _DINO, _README)),
    'resmlp_s36.fb_in1k': _cfg(_META['s36'], weights=_weights(
        'resmlp_36_no_dist.pth', 79.7, f'{_PAPER} Table 1 (no distillation)')),
    'resmlp_s36.fb_distilled_in1k': _cfg(_META['s36'], weights=_weights(
        'resmlp_36_dist.pth', 81.1, f'{_README} (distilled)', _README)),
    'resmlp_b24.untrained': _cfg(ModelMeta(
        paper=f'{_PAPER} Table 1 (B24, patch 16)', official=_OFFICIAL + ' (resmlp_models with patch 16)',
        params=115_736_776, gmacs=23.021, params_paper='116M', gmacs_paper=23.0, top1_paper=81.0,
        notes='not a factory in the official repo; built from resmlp_models(patch_size=16, embed_dim=768, depth=24)')),
    'resmlp_b24_p8.fb_in1k': _cfg(_META['b24_p8'], weights=_weights(
        'resmlpB_24_no_dist.pth', None, 'no top-1 published for the undistilled B24/8 file')),
    'resmlp_b24_p8.fb_distilled_in1k': _cfg(_META['b24_p8'], weights=_weights(
        'resmlpB_24_dist.pth', 83.6, f'{_README} (distilled)', _README)),
    'resmlp_b24_p8.fb_in22k_ft_in1k': _cfg(_META['b24_p8'], weights=_weights(
        'resmlpB_24_22k.pth', 84.4, f'{_README} (ImageNet-22k pre-training, fine-tuned on ImageNet-1k)', _README)),
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
