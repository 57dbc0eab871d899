"""Reference computations and synthetic predictions shared by several test modules."""

import contextlib
import copy
import io

import numpy as np
from detfold.core.coco import Coco


def pycocotools_eval(gt, preds):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt_api = COCO()
        gt_api.dataset = copy.deepcopy(gt.data)
        gt_api.createIndex()
        dt_api = gt_api.loadRes(copy.deepcopy(preds))
        ev = COCOeval(gt_api, dt_api, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    per_class = {}
    names = {cat["id"]: cat["name"] for cat in gt.categories}
    for k, cat_id in enumerate(ev.params.catIds):  # pycocotools orders classes by sorted id
        p = ev.eval["precision"][:, :, k, 0, -1]
        per_class[names[cat_id]] = float(np.mean(p[p > -1])) if (p > -1).any() else None
    return ev.stats, per_class


def clean(coco):
    coco.data["annotations"] = [a for a in coco.annotations if a["bbox"][2] > 0 and a["bbox"][3] > 0]
    return Coco(coco.data, coco.path)


def noisy_member(gt, seed, drop=0.3, jitter=2.0):
    rng = np.random.default_rng(seed)
    out = []
    for a in gt.annotations:
        if rng.random() < drop:
            continue
        x, y, w, h = (v + rng.normal(0, jitter) for v in a["bbox"])
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [x, y, max(w, 1), max(h, 1)],
                "score": float(rng.uniform(0.3, 1)),
            }
        )
    for im in gt.images:
        for _ in range(3):
            out.append(
                {
                    "image_id": im["id"],
                    "category_id": int(rng.choice(gt.category_ids)),
                    "bbox": [float(v) for v in rng.uniform([0, 0, 5, 5], [200, 150, 60, 60])],
                    "score": float(rng.uniform(0, 0.4)),
                }
            )
    return out
