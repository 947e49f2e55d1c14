"""Detection metrics: COCO mAP equal to pycocotools, a confusion matrix with background, PR curves.

``coco_eval`` runs faster-coco-eval (a C++ port of pycocotools' COCOeval that gives the same
numbers several times faster) on a COCO ground-truth dict and a COCO results list.
Conventions:

- Where pycocotools reports -1 (no ground truth in that area range, or none at all) the value
  here is ``float('nan')``, so that averages over runs and plots cannot mistake it for a score.
- ``to_coco`` turns VOC ``difficult`` boxes (``gt_ignore``) into ``iscrowd=1`` annotations.
  pycocotools overwrites any ``ignore`` key of a ground-truth annotation with its ``iscrowd`` flag,
  so ``iscrowd`` is the only flag COCOeval honours: such a box is never counted as missed, and a
  detection that overlaps it (IoU taken over the detection's own area) and matches no regular box
  is neither a true nor a false positive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from torchvision.ops import box_iou

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]

# Names of pycocotools' 12 summary statistics, in its order.
STAT_NAMES = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)


def _quiet(*_args: object, **_kwargs: object) -> None:
    """A print function for faster-coco-eval that prints nothing."""


def _nan_if_negative(x: float) -> float:
    return float("nan") if x < 0 else float(x)


def _ground_truth_copy(gt: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``gt`` that the evaluator may annotate in place, with defaults filled in.

    Annotation ids are renumbered from 1: pycocotools stores matched ids in arrays where 0 means
    "unmatched", so a ground-truth box with id 0 would silently never count as found.
    """
    anns = []
    for i, a in enumerate(gt.get("annotations", [])):
        box = [float(v) for v in a["bbox"]]
        ann = {
            **a,
            "id": i + 1,
            "image_id": int(a["image_id"]),
            "category_id": int(a["category_id"]),
            "bbox": box,
            "area": float(a["area"]) if "area" in a else box[2] * box[3],
            "iscrowd": int(a.get("iscrowd", 0)),
        }
        anns.append(ann)
    return {
        "images": [dict(im) for im in gt.get("images", [])],
        "annotations": anns,
        "categories": [dict(c) for c in gt.get("categories", [])],
    }


def _results_copy(results: Sequence[Mapping[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """Plain-Python copies of the results (loadRes adds keys to the dicts it is given)."""
    out = []
    for r in results:
        d: dict[str, Any] = {
            "image_id": int(r["image_id"]),
            "category_id": int(r["category_id"]),
            "score": float(r["score"]),
        }
        if iou_type == "segm":
            d["segmentation"] = r["segmentation"]
        else:
            d["bbox"] = [float(v) for v in r["bbox"]]
        out.append(d)
    return out


def _category_names(cats: Sequence[Mapping[str, Any]]) -> list[str]:
    """Category names as result keys; a name shared by several ids gets its id appended."""
    names = [str(c.get("name", c["id"])) for c in cats]
    return [
        f"{n} ({c['id']})" if names.count(n) > 1 else n for n, c in zip(names, cats, strict=True)
    ]


def _empty_result(names: Sequence[str]) -> dict[str, Any]:
    nan = float("nan")
    return {
        **dict.fromkeys(STAT_NAMES, nan),
        "per_class": dict.fromkeys(names, nan),
        "per_class_ap50": dict.fromkeys(names, nan),
        "precision_recall": {n: {"recall": [], "precision": []} for n in names},
    }


def coco_eval(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], *, iou_type: str = "bbox"
) -> dict[str, Any]:
    """COCO detection metrics of ``results`` against ``gt``, equal to pycocotools' COCOeval.

    ``gt`` is a COCO dict (``images`` with id/width/height, ``annotations`` with id/image_id/
    category_id/bbox xywh/area/iscrowd, ``categories`` with id/name); ``results`` a COCO results
    list (image_id, category_id, bbox xywh or segmentation, score). Neither is modified.

    Returns pycocotools' 12 statistics (``map``, ``map_50``, ``map_75``, ``map_small``,
    ``map_medium``, ``map_large``, ``mar_1``, ``mar_10``, ``mar_100``, ``mar_small``,
    ``mar_medium``, ``mar_large``; NaN where pycocotools gives -1), ``per_class`` and
    ``per_class_ap50`` (category name -> AP@[.5:.95] / AP@.5, NaN for a class without ground
    truth; a name shared by several ids gets " (id)" appended) and ``precision_recall``
    (category name -> ``{"recall": [...], "precision": [...]}``, COCO's interpolated curve at
    IoU 0.5, all areas, 100 detections; empty lists for a class without ground truth).
    Results for unknown categories are ignored, as in pycocotools.

    Raises:
        ValueError: on an unsupported ``iou_type`` or results for images not in ``gt``.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
    gt_dict = _ground_truth_copy(gt)
    cats = sorted(gt_dict["categories"], key=lambda c: int(c["id"]))
    names = _category_names(cats)
    image_ids = {int(im["id"]) for im in gt_dict["images"]}
    res = _results_copy(results, iou_type)
    unknown = sorted({r["image_id"] for r in res} - image_ids)
    if unknown:
        raise ValueError(f"results name {len(unknown)} image id(s) not in gt, e.g. {unknown[:5]}")
    if not image_ids or not cats:
        return _empty_result(names)

    coco_gt = COCO(gt_dict, print_function=_quiet)
    coco_dt = coco_gt.loadRes(res)
    coco_dt.print_function = _quiet
    ev = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=_quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()

    out: dict[str, Any] = {
        k: _nan_if_negative(v) for k, v in zip(STAT_NAMES, ev.stats[:12], strict=True)
    }
    # precision: [IoU thresholds, recall thresholds, classes, area ranges, max detections];
    # area range 0 is "all", the last max-detections entry is 100, IoU index 0 is 0.5.
    precision = np.asarray(ev.eval["precision"])
    recall_thresholds = [float(r) for r in ev.params.recThrs]
    index = {int(c): k for k, c in enumerate(ev.params.catIds)}
    per_class, per_class_ap50, curves = {}, {}, {}
    for cat, name in zip(cats, names, strict=True):
        p = precision[:, :, index[int(cat["id"])], 0, -1]
        valid = p > -1
        has_gt = bool(valid.any())
        per_class[name] = float(p[valid].mean()) if has_gt else float("nan")
        per_class_ap50[name] = float(p[0][valid[0]].mean()) if valid[0].any() else float("nan")
        curves[name] = {
            "recall": list(recall_thresholds) if has_gt else [],
            "precision": [float(v) for v in p[0]] if has_gt else [],
        }
    out.update(per_class=per_class, per_class_ap50=per_class_ap50, precision_recall=curves)
    return out


def _as_numpy(x: ArrayLike | None, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """numpy copy of an array-like (numpy, torch, list), reshaped; None gives an empty array."""
    if x is None:
        return np.zeros((0, *shape[1:]), dtype=dtype)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.double() if x.is_floating_point() else x).numpy()  # numpy has no bfloat16
    return np.asarray(x, dtype=dtype).reshape(shape)


def _check_lengths(n: int, **seqs: Sequence[Any] | None) -> None:
    for name, s in seqs.items():
        if s is not None and len(s) != n:
            raise ValueError(f"{name} has {len(s)} entries for {n} images")


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{what} must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )


def to_coco(
    images: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    gt_boxes: Sequence[ArrayLike],
    gt_labels: Sequence[ArrayLike],
    *,
    pred_boxes: Sequence[ArrayLike] | None = None,
    pred_labels: Sequence[ArrayLike] | None = None,
    pred_scores: Sequence[ArrayLike] | None = None,
    gt_ignore: Sequence[ArrayLike] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A COCO ground-truth dict and results list from per-image arrays, for ``coco_eval``.

    ``images[i]`` gives ``width`` and ``height`` (and optionally ``id``, default ``i + 1``, and
    ``file_name``); boxes are xyxy in pixels, labels 0-based indices into ``class_names``
    (category id = index + 1); arrays may be numpy, torch or lists. ``gt_ignore[i]`` marks boxes
    (VOC ``difficult``) that count neither as found nor as missed: they become ``iscrowd=1``.
    """
    n = len(images)
    _check_lengths(
        n,
        gt_boxes=gt_boxes,
        gt_labels=gt_labels,
        pred_boxes=pred_boxes,
        pred_labels=pred_labels,
        pred_scores=pred_scores,
        gt_ignore=gt_ignore,
    )
    if pred_boxes is not None and (pred_labels is None or pred_scores is None):
        raise ValueError("pred_boxes needs pred_labels and pred_scores")
    c = len(class_names)
    coco_images = []
    for i, im in enumerate(images):
        entry = {
            "id": int(im.get("id", i + 1)),
            "width": int(im["width"]),
            "height": int(im["height"]),
        }
        if "file_name" in im:
            entry["file_name"] = str(im["file_name"])
        coco_images.append(entry)
    ids = [im["id"] for im in coco_images]
    if len(set(ids)) != n:
        raise ValueError("image ids must be unique")

    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, image_id in enumerate(ids):
        boxes = _as_numpy(gt_boxes[i], np.float64, (-1, 4))
        labels = _as_numpy(gt_labels[i], np.int64, (-1,))
        ignore = (
            _as_numpy(gt_ignore[i], np.bool_, (-1,))
            if gt_ignore is not None
            else np.zeros(len(labels), np.bool_)
        )
        if not len(boxes) == len(labels) == len(ignore):
            raise ValueError(
                f"image {i}: {len(boxes)} boxes, {len(labels)} labels, {len(ignore)} flags"
            )
        _check_labels(labels, c, "gt_labels")
        wh = boxes[:, 2:] - boxes[:, :2]
        for box, size, label, ign in zip(boxes, wh, labels, ignore, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(box[0]), float(box[1]), float(size[0]), float(size[1])],
                    "area": float(size[0] * size[1]),
                    "iscrowd": int(ign),
                }
            )
        if pred_boxes is None:
            continue
        boxes = _as_numpy(pred_boxes[i], np.float64, (-1, 4))
        labels = _as_numpy(pred_labels[i], np.int64, (-1,))  # type: ignore[index]
        scores = _as_numpy(pred_scores[i], np.float64, (-1,))  # type: ignore[index]
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError(
                f"image {i}: {len(boxes)} predicted boxes, {len(labels)} labels, "
                f"{len(scores)} scores"
            )
        _check_labels(labels, c, "pred_labels")
        wh = boxes[:, 2:] - boxes[:, :2]
        for box, size, label, score in zip(boxes, wh, labels, scores, strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(box[0]), float(box[1]), float(size[0]), float(size[1])],
                    "score": float(score),
                }
            )
    gt = {
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": str(name)} for k, name in enumerate(class_names)],
    }
    return gt, results


def _greedy_pairs(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one (gt, detection) pairs with IoU >= threshold, taken by IoU descending.

    Written by hand because no library used here offers class-agnostic greedy matching; unlike
    Ultralytics' two ``np.unique`` passes, a pair is only skipped when one side is already taken.
    """
    g, d = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[g, d], kind="stable")
    used_g: set[int] = set()
    used_d: set[int] = set()
    pairs = []
    for gi, di in zip(g[order].tolist(), d[order].tolist(), strict=True):
        if gi in used_g or di in used_d:
            continue
        used_g.add(gi)
        used_d.add(di)
        pairs.append((gi, di))
    return pairs


def detection_confusion_matrix(
    gt_boxes: Sequence[ArrayLike],
    gt_labels: Sequence[ArrayLike],
    pred_boxes: Sequence[ArrayLike],
    pred_labels: Sequence[ArrayLike],
    pred_scores: Sequence[ArrayLike],
    num_classes: int,
    *,
    iou: float = 0.5,
    conf: float = 0.25,
) -> np.ndarray:
    """A (C+1, C+1) count matrix: rows true class, columns predicted class, index C background.

    Per image (xyxy boxes, 0-based labels), detections with score >= ``conf`` are matched to
    ground-truth boxes regardless of class, one-to-one, greedily by IoU descending among pairs
    with IoU >= ``iou``. A matched pair adds 1 at [true, predicted]; an unmatched box adds 1 at
    [true, C] (missed); an unmatched detection adds 1 at [C, predicted] (false positive).
    """
    n = len(gt_boxes)
    _check_lengths(
        n,
        gt_labels=gt_labels,
        pred_boxes=pred_boxes,
        pred_labels=pred_labels,
        pred_scores=pred_scores,
    )
    c = num_classes
    m = np.zeros((c + 1, c + 1), dtype=np.int64)
    for i in range(n):
        gb = _as_numpy(gt_boxes[i], np.float64, (-1, 4))
        gl = _as_numpy(gt_labels[i], np.int64, (-1,))
        pb = _as_numpy(pred_boxes[i], np.float64, (-1, 4))
        pl = _as_numpy(pred_labels[i], np.int64, (-1,))
        ps = _as_numpy(pred_scores[i], np.float64, (-1,))
        if len(gb) != len(gl) or not len(pb) == len(pl) == len(ps):
            raise ValueError(f"image {i}: boxes, labels and scores differ in length")
        _check_labels(gl, c, "gt_labels")
        _check_labels(pl, c, "pred_labels")
        keep = ps >= conf
        pb, pl = pb[keep], pl[keep]
        pairs: list[tuple[int, int]] = []
        if len(gb) and len(pb):
            ious = box_iou(torch.from_numpy(gb), torch.from_numpy(pb)).numpy()
            pairs = _greedy_pairs(ious, iou)
        matched_g = np.zeros(len(gb), np.bool_)
        matched_d = np.zeros(len(pb), np.bool_)
        for gi, di in pairs:
            m[gl[gi], pl[di]] += 1
            matched_g[gi] = matched_d[di] = True
        np.add.at(m[:, c], gl[~matched_g], 1)
        np.add.at(m[c], pl[~matched_d], 1)
    return m
