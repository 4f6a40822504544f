"""Every data set name a command takes (the ``--dataset`` choices of ``validate``, which takes a checkpoint of any
task): the classification data sets, the segmentation ones and the detection ones, each list where its task keeps
it."""
from __future__ import annotations

from mlpvision.data.datasets import DATASETS
from mlpvision.data.segmentation import SEG_DATASETS
from mlpvision.engine.detection import DATASETS as DET_DATASETS

DATASET_CHOICES = tuple(dict.fromkeys((*DATASETS, *SEG_DATASETS, *DET_DATASETS)))
