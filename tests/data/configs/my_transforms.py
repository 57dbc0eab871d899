"""A user's own transform, imported by albu_custom.py through custom_imports (a module beside it)."""

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS


@TRANSFORMS.register_module()
class GrayWorld(BaseTransform):
    """Scale each colour channel so that its mean equals the image's mean (white balance)."""

    def transform(self, results: dict) -> dict:
        img = results["img"].astype(np.float32)
        means = img.reshape(-1, img.shape[-1]).mean(axis=0)
        results["img"] = (img * (means.mean() / np.maximum(means, 1e-6))).clip(0, 255).astype(np.uint8)
        return results
