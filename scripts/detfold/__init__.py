"""detfold: K-fold cross-validation orchestration for object detection.

The library behind the Snakemake workflow and the ``detfold`` command. Light modules
(coco, audit, folds, metrics, fusion) import only numpy/pandas; the MMDetection parts
(:mod:`detfold.mmdet_train`, :mod:`detfold.mmdet_predict`) import torch lazily.
"""

__version__ = "0.1.0"
