"""Setting up mmdet in a training or prediction process, with work-arounds for known bugs of the
pinned mmdet (3.3.0), each naming its upstream issue and applied only where the bug is present."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def prepare_mmdet(threads: int) -> str:
    """Register mmdet's modules, apply the work-arounds the installed mmdet needs and use
    ``threads`` CPU threads; return the device to run on (``cuda`` or ``cpu``)."""
    import torch
    from mmdet.models.dense_heads import SSDHead
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    # open-mmlab/mmdetection#11305 (#11780; PR #11524 unmerged): BaseDenseHead's prediction reads
    # self.loss_cls, which SSDHead never sets, so every SSD predicts with AttributeError. No loss
    # object means no custom class channels: the plain softmax path, as before mmdet 3.3.
    if not hasattr(SSDHead, "loss_cls"):
        SSDHead.loss_cls = None
        log.info("mmdet work-around: SSDHead.loss_cls = None (mmdetection#11305)")
    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    return "cuda" if torch.cuda.is_available() else "cpu"
