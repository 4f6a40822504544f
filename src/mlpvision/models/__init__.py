"""Model families. Importing this package registers every mlpvision model in timm."""
from ._base import BackboneBase, IsotropicNet, PyramidNet, check_input
from ._registry import (
    ModelMeta,
    Weights,
    create_any_model,
    create_model,
    is_model,
    list_models,
    list_pretrained,
    load_pretrained_dir,
    model_family,
    model_meta,
    pretrained_weights,
)
from .as_mlp import *  # noqa: F403
from .cycle_mlp import *  # noqa: F403
from .hire_mlp import *  # noqa: F403
from .repmlp import *  # noqa: F403
from .repmlpnet import *  # noqa: F403
from .resmlp import *  # noqa: F403
from .strip_mlp import *  # noqa: F403
from .wave_mlp import *  # noqa: F403
