"""Re-parameterisation: turn a training-form model into its inference (deploy) form.

Every module that can be fused defines ``reparameterize()``, which works in place, returns early when the module
is already fused, and deletes the training-only branches (the timm ``byobnet`` RepVGG convention). The model-level
walk below calls it from the top down, so a module that fuses its children itself is called first and its
children, already gone or fused, are skipped or return early.
"""
from __future__ import annotations

import copy

import torch.nn as nn

__all__ = ['reparameterize', 'is_reparameterized']


def _walk(module: nn.Module) -> None:
    for child in list(module.children()):
        if hasattr(child, 'reparameterize'):
            child.reparameterize()
        _walk(child)


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return the inference form of ``model`` (a deep copy unless ``inplace``); outputs are unchanged in eval mode.

    A model built with ``create_model(name, deploy=True)`` has the same structure, so the state_dict of the result
    loads into it.
    """
    if not inplace:
        model = copy.deepcopy(model)
    if hasattr(model, 'reparameterize'):
        model.reparameterize()
    _walk(model)
    if hasattr(model, 'deploy'):
        model.deploy = True
    return model


def is_reparameterized(model: nn.Module) -> bool:
    return bool(getattr(model, 'deploy', False))
