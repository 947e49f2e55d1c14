"""Benchmark: ``coco_eval`` (faster-coco-eval) against pycocotools' COCOeval on the same data.

Generates a random COCO ground truth (small/medium/large boxes over ``--classes`` classes, some
images without boxes) and ``--detections`` results (jittered copies of the boxes, some with a
wrong class, plus random false positives), then times, in this one process:

- ``coco_eval(gt, results)``: indexing, evaluate, accumulate, summarize, per-class AP and PR
  curves;
- pycocotools: ``COCO`` indexing, ``loadRes``, ``COCOeval`` evaluate + accumulate + summarize.

Each is run ``--repeats`` times, taking turns, and the fastest run is reported (wall-clock
and CPU time; the CPU time is steadier on a busy machine). The 12 statistics must agree
to 1e-6 or the script exits with status 1.

    python bench/detect_eval.py --images 5000 --detections 35000
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from rich.console import Console
from rich.table import Table

from pixtell.metrics.detection import STAT_NAMES, coco_eval


def make_data(
    n_images: int, n_detections: int, n_classes: int, seed: int
) -> tuple[dict, list[dict]]:
    """Ground truth with about ``0.7 * n_detections`` boxes and exactly ``n_detections`` results."""
    rng = np.random.default_rng(seed)
    w, h = 640, 480
    n_gt = int(0.7 * n_detections)
    image_of_gt = np.sort(rng.integers(0, n_images, n_gt))
    sizes = np.exp(rng.uniform(np.log(4), np.log(400), (n_gt, 2)))
    sizes = np.minimum(sizes, [w - 1, h - 1])
    xy = rng.uniform(0, 1, (n_gt, 2)) * ([w, h] - sizes)
    labels = rng.integers(0, n_classes, n_gt)
    anns = [
        {
            "id": k + 1,
            "image_id": int(image_of_gt[k]) + 1,
            "category_id": int(labels[k]) + 1,
            "bbox": [*map(float, xy[k]), *map(float, sizes[k])],
            "area": float(sizes[k].prod()),
            "iscrowd": 0,
        }
        for k in range(n_gt)
    ]
    # 80% of the boxes detected (jittered, 10% with a wrong class), the rest random boxes
    found = rng.permutation(n_gt)[: int(0.8 * n_gt)]
    jitter = rng.normal(0, 0.1, (len(found), 4)) * np.tile(sizes[found], 2)
    det_xy = xy[found] + jitter[:, :2]
    det_wh = np.maximum(sizes[found] + jitter[:, 2:], 1)
    det_labels = np.where(
        rng.random(len(found)) < 0.9, labels[found], rng.integers(0, n_classes, len(found))
    )
    det_images = image_of_gt[found]
    n_fp = n_detections - len(found)
    fp_wh = rng.uniform(4, 300, (n_fp, 2))
    det_xy = np.concatenate([det_xy, rng.uniform(0, 1, (n_fp, 2)) * ([w, h] - fp_wh)])
    det_wh = np.concatenate([det_wh, fp_wh])
    det_labels = np.concatenate([det_labels, rng.integers(0, n_classes, n_fp)])
    det_images = np.concatenate([det_images, rng.integers(0, n_images, n_fp)])
    scores = rng.random(n_detections)
    results = [
        {
            "image_id": int(det_images[k]) + 1,
            "category_id": int(det_labels[k]) + 1,
            "bbox": [*map(float, det_xy[k]), *map(float, det_wh[k])],
            "score": float(scores[k]),
        }
        for k in range(n_detections)
    ]
    gt = {
        "images": [{"id": i + 1, "width": w, "height": h} for i in range(n_images)],
        "annotations": anns,
        "categories": [{"id": c + 1, "name": f"class{c}"} for c in range(n_classes)],
    }
    return gt, results


def run_pycocotools(gt: dict, results: list[dict]) -> np.ndarray:
    """pycocotools' 12 statistics (-1 as NaN); inputs are copied since it annotates them."""
    gt, results = copy.deepcopy(gt), copy.deepcopy(results)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.where(ev.stats < 0, np.nan, ev.stats)


def timed(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float, Any]]:
    """Per function: fastest wall-clock and CPU seconds over ``repeats`` calls, last result.

    The functions take turns within each repeat, so that a change in machine load affects
    all of them alike.
    """
    best = {name: [math.inf, math.inf, None] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            b = best[name]
            b[0], b[1], b[2] = min(b[0], wall), min(b[1], cpu), out
    return {name: (b[0], b[1], b[2]) for name, b in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=35000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    console = Console()

    gt, results = make_data(args.images, args.detections, args.classes, args.seed)
    console.print(
        f"{args.images} images, {len(gt['annotations'])} boxes, {len(results)} detections, "
        f"{args.classes} classes; fastest of {args.repeats} runs"
    )
    times = timed(
        {
            "pycocotools COCOeval": lambda: run_pycocotools(gt, results),
            "pixtell coco_eval": lambda: coco_eval(gt, results),
        },
        args.repeats,
    )
    ref, ours = times["pycocotools COCOeval"][2], times["pixtell coco_eval"][2]
    ours_stats = np.array([ours[k] for k in STAT_NAMES])
    diff = float(np.nanmax(np.abs(ours_stats - ref)))
    same_nan = bool((np.isnan(ours_stats) == np.isnan(ref)).all())

    table = Table(title="COCO bbox evaluation")
    for col in ("method", "seconds", "ratio", "CPU seconds", "CPU ratio"):
        table.add_column(col, justify="left" if col == "method" else "right")
    base_wall, base_cpu, _ = times["pycocotools COCOeval"]
    for name, (wall, cpu, _) in times.items():
        table.add_row(
            name, f"{wall:.2f}", f"{base_wall / wall:.1f}x", f"{cpu:.2f}", f"{base_cpu / cpu:.1f}x"
        )
    console.print(table)
    console.print(
        f"mAP {ours['map']:.4f} (pycocotools {ref[0]:.4f}); max |diff| of 12 stats {diff:.1e}"
    )
    if diff > 1e-6 or not same_nan:
        console.print("[red]statistics differ from pycocotools[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
