"""Work-arounds for known bugs of the pinned mmdet (3.3.0), each naming its upstream issue, each
applied only where the bug is present. Called by training and prediction after mmdet's modules
are registered."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def patch_mmdet() -> list[str]:
    """Apply every work-around that the installed mmdet needs; return what was patched."""
    patched = []
    from mmdet.models.dense_heads import SSDHead

    # open-mmlab/mmdetection#11305 (#11780; PR #11524 unmerged): BaseDenseHead's prediction reads
    # self.loss_cls, which SSDHead never sets, so every SSD predicts with AttributeError. No loss
    # object means no custom class channels: the plain softmax path, as before mmdet 3.3.
    if "loss_cls" not in vars(SSDHead) and not hasattr(SSDHead, "loss_cls"):
        SSDHead.loss_cls = None
        patched.append("SSDHead.loss_cls = None (mmdetection#11305)")
    for line in patched:
        log.info("mmdet work-around: %s", line)
    return patched
