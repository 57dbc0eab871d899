"""detfold: K-fold cross-validation orchestration for object detection.

The library behind the Snakemake workflow and the ``detfold`` command: one package per stage
(``workflow/<stage>.smk`` -> ``detfold.<stage>``, whose ``stage`` module holds what the rule
scripts call) and a small core (:mod:`detfold.core`: COCO files and predictions, file I/O, the
config gate, logging). Only the train and predict packages import torch and mmdet, lazily.
"""

__version__ = "0.1.0"

import os

# Nothing is fetched at run time: albumentations (imported by mmdet's transforms) would ask
# PyPI for its latest version at every import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
