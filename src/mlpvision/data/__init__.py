"""Datasets, transforms and loaders for training and evaluating mlpvision models (built on timm.data)."""
from .datasets import (
    DATASETS,
    CorruptImageError,
    DatasetError,
    DatasetInfo,
    build_dataset,
    caltech101_split,
    digits_arrays,
    scan_image_folder,
)
from .loader import create_eval_loader, create_train_loader, set_loader_epoch, steps_per_epoch
from .transforms import DataConfig, ToMode, build_transform, resolve_data_config

__all__ = [
    'DATASETS', 'CorruptImageError', 'DatasetError', 'DatasetInfo', 'build_dataset', 'caltech101_split',
    'digits_arrays', 'scan_image_folder', 'create_eval_loader', 'create_train_loader', 'set_loader_epoch',
    'steps_per_epoch', 'DataConfig', 'ToMode', 'build_transform', 'resolve_data_config',
]
