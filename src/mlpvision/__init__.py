"""mlpvision: vision-MLP backbones (AS-MLP, Hire-MLP, Strip-MLP, RepMLP, ResMLP) on timm.

``import mlpvision`` registers every model in timm's registry, so ``timm.create_model(name)`` works too.
"""
from . import hub  # downloads, the Hub folder format, convert
from ._checkpoint import CheckpointError, load_checkpoint, read_state_dict, save_state_dict
from ._profile import Profile, count_params, profile
from ._reparam import is_reparameterized, reparameterize
from ._version import __version__
from .models import (
    ModelMeta,
    Weights,
    create_model,
    is_model,
    list_models,
    list_pretrained,
    model_family,
    model_meta,
    pretrained_weights,
)

__all__ = [
    'create_model', 'list_models', 'is_model', 'model_family', 'model_meta', 'ModelMeta', 'reparameterize',
    'is_reparameterized', 'profile', 'Profile', 'count_params', 'load_checkpoint', 'read_state_dict',
    'save_state_dict', 'CheckpointError', '__version__', 'Weights', 'pretrained_weights', 'list_pretrained',
]
