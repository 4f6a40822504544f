"""Training and evaluation engine: configuration and recipes, the training loop, evaluation, checkpoints,
distributed helpers and run records."""
from .._checkpoint import load_finetune_weights, load_weights
from .checkpoint import get_rng_state, load_checkpoint_file, save_checkpoint
from .config import TrainConfig, find_recipe, list_recipes, load_recipe, make_config, scaled_lrs
from .distributed import DistInfo, init_distributed
from .evaluate import EvalResult, evaluate
from .train import (
    BatchSizeError,
    NonFiniteLossError,
    TrainResult,
    build_model,
    describe_model,
    fit,
    resolve_config,
    train_one_epoch,
)

__all__ = [
    'TrainConfig', 'find_recipe', 'list_recipes', 'load_recipe', 'make_config', 'scaled_lrs', 'DistInfo',
    'init_distributed', 'EvalResult', 'evaluate', 'BatchSizeError', 'NonFiniteLossError', 'TrainResult',
    'build_model', 'describe_model', 'fit', 'resolve_config', 'train_one_epoch', 'get_rng_state',
    'load_checkpoint_file', 'load_finetune_weights', 'load_weights', 'save_checkpoint',
]
