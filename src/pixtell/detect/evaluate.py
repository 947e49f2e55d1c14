"""``detect.evaluate``: COCO metrics on a run's held-out split (or any COCO GT + results
file), a confusion matrix with background, precision-recall curves, drawn predictions and
the report."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torchvision.ops import box_iou

from pixtell.data.images import ImageLoadError, load_image
from pixtell.detect.data import DetImage, read_split
from pixtell.detect.predict import Detector, draw_boxes
from pixtell.detect.train import SPLIT_FILE
from pixtell.metrics.detection import coco_eval, detection_confusion_matrix, to_coco
from pixtell.models import create
from pixtell.models.io import META_FILE
from pixtell.report import (
    Section,
    contact_sheet,
    plot_confusion_matrix,
    plt,
    run_summary,
    training_section,
    write_report,
)
from pixtell.runs import Run

console = Console(highlight=False, soft_wrap=True)
METRICS_FILE = "metrics.json"
SUMMARY_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
SUMMARY_KEYS += ("mar_1", "mar_10", "mar_100")
# true positive, false positive, missed ground truth
COLORS = {"tp": "#2ca02c", "fp": "#d62728", "miss": "#ff7f0e"}
_PAGE = 12  # images on the page of drawn predictions
# Score threshold of the confusion matrix and the drawn page. Measured on tiny_fcos (test mAP@.5
# 0.98): at 0.25 its cross-class duplicates outnumber true positives 2:1, at 0.5 they are 1:5.
DEFAULT_CONF = 0.5


@dataclass
class EvalResult:
    """Where an evaluation wrote its files, and its metrics."""

    dir: Path
    metrics: dict[str, Any]
    report: Path


@dataclass
class Scored:
    """Per-image ground truth and detections (xyxy, 0-based labels) of one evaluation."""

    images: list[dict[str, Any]]  # id, width, height, file_name
    gt_boxes: list[np.ndarray]
    gt_labels: list[np.ndarray]
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    scores: list[np.ndarray]
    paths: list[Path | None]
    ignore: list[np.ndarray] | None = None  # VOC "difficult": neither found nor missed


def _jsonable(obj: Any) -> Any:
    """NaN (pycocotools' -1, "no ground truth") as null: JSON has no NaN."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, Mapping):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _out_dir(out: Path, owned: bool) -> Path:
    """``out`` ready for our files; a non-empty folder not made by an evaluation is refused."""
    foreign = not out.is_dir() or (any(out.iterdir()) and not (out / METRICS_FILE).is_file())
    if out.exists() and not owned and foreign:
        raise FileExistsError(
            f"{out} exists and is not an earlier evaluation's folder: choose a new --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def match_detections(
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    iou: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(detection is a true positive, ground-truth box was found) for one image.

    COCO's rule at one IoU threshold: detections by score descending each take the unmatched
    box of their class with the highest IoU >= ``iou``. Written here because COCOeval keeps
    its per-detection matches inside its area-range/max-detection bookkeeping.
    """
    tp = np.zeros(len(boxes), dtype=bool)
    found = np.zeros(len(gt_boxes), dtype=bool)
    if not len(boxes) or not len(gt_boxes):
        return tp, found
    ious = box_iou(torch.as_tensor(boxes).double(), torch.as_tensor(gt_boxes).double()).numpy()
    for d in np.argsort(-scores, kind="stable"):
        cand = np.where((gt_labels == labels[d]) & ~found, ious[d], -1.0)
        g = int(cand.argmax())
        if cand[g] >= iou:
            tp[d] = found[g] = True
    return tp, found


def without_difficult(scored: Scored, iou: float) -> Scored:
    """``scored`` minus VOC "difficult" boxes and the detections only they explain.

    As in the mAP (where they are ``iscrowd``), a difficult box is never missed, and a
    detection that overlaps one (IoU >= ``iou``) but no regular box is no false positive.
    """
    if scored.ignore is None or not any(m.any() for m in scored.ignore):
        return scored
    out = Scored(scored.images, [], [], [], [], [], scored.paths)
    for i, hard in enumerate(scored.ignore):
        gb, gl = scored.gt_boxes[i], scored.gt_labels[i]
        boxes = scored.boxes[i]
        keep = np.ones(len(boxes), dtype=bool)
        if hard.any() and len(boxes):
            ious = box_iou(torch.as_tensor(boxes).double(), torch.as_tensor(gb).double()).numpy()
            keep = ~((ious[:, hard] >= iou).any(1) & ~(ious[:, ~hard] >= iou).any(1))
        out.gt_boxes.append(gb[~hard])
        out.gt_labels.append(gl[~hard])
        out.boxes.append(boxes[keep])
        out.labels.append(scored.labels[i][keep])
        out.scores.append(scored.scores[i][keep])
    return out


def _confusion(scored: Scored, num_classes: int, conf: float, iou: float) -> list[list[int]]:
    return detection_confusion_matrix(
        scored.gt_boxes,
        scored.gt_labels,
        scored.boxes,
        scored.labels,
        scored.scores,
        num_classes,
        iou=iou,
        conf=conf,
    ).tolist()


def _counts(scored: Scored, conf: float, iou: float) -> dict[str, Any]:
    return {
        "n_images": len(scored.images),
        "n_boxes": int(sum(len(b) for b in scored.gt_boxes)),
        "n_detections": int(sum(len(s) for s in scored.scores)),
        "conf": conf,
        "iou": iou,
    }


# -- figures ---------------------------------------------------------------------------------
def plot_pr_curves(curves: Mapping[str, Mapping[str, list]], out: Path) -> Path | None:
    """COCO's interpolated precision-recall curve per class (IoU 0.5); None if none has GT."""
    drawn = {n: c for n, c in curves.items() if c["recall"]}
    if not drawn:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for name, c in drawn.items():
        p = np.asarray(c["precision"], dtype=float)
        ap = float(p[p > -1].mean()) if (p > -1).any() else 0.0
        ax.plot(c["recall"], np.clip(p, 0, 1), label=f"{name} (AP50 {ap:.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("precision-recall per class (IoU 0.5)")
    ax.grid(alpha=0.3)
    if len(drawn) <= 20:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def _page(
    scored: Scored, class_names: list[str], conf: float, iou: float, out: Path
) -> Path | None:
    """Drawn predictions: the images with most mistakes first; TP, FP and misses coloured."""
    outcomes = []
    for i in range(len(scored.images)):
        keep = scored.scores[i] >= conf
        b, lab, s = scored.boxes[i][keep], scored.labels[i][keep], scored.scores[i][keep]
        tp, found = match_detections(scored.gt_boxes[i], scored.gt_labels[i], b, lab, s, iou)
        outcomes.append((b, lab, s, tp, found))
    errors = [int((~o[3]).sum() + (~o[4]).sum()) for o in outcomes]
    order = sorted(range(len(outcomes)), key=lambda i: -errors[i])
    items = []
    for i in order:
        path = scored.paths[i]
        if path is None or len(items) == _PAGE:
            continue
        try:
            image = load_image(path)
        except ImageLoadError:
            continue
        b, lab, s, tp, found = outcomes[i]
        missed = ~found
        # false positives first, so that misses and true positives are drawn over them
        order = np.argsort(tp, kind="stable")
        boxes = np.concatenate([b[order], scored.gt_boxes[i][missed]]).reshape(-1, 4)
        captions = [f"{class_names[lab[k]]} {s[k]:.2f}" for k in order]
        captions += [f"missed {class_names[k]}" for k in scored.gt_labels[i][missed]]
        colors = [COLORS["tp"] if tp[k] else COLORS["fp"] for k in order]
        colors += [COLORS["miss"]] * int(missed.sum())
        drawn = draw_boxes(image, boxes, captions, colors, max_side=320)
        caption = f"{path.name}\nTP {int(tp.sum())}  FP {int((~tp).sum())}  missed {missed.sum()}"
        items.append((drawn, caption))
    return contact_sheet(
        items,
        out,
        cols=4,
        title=f"green: true positive, red: false positive, orange: missed (score >= {conf:g}, "
        f"IoU >= {iou:g})",
    )


def _figures(
    scored: Scored, metrics: dict[str, Any], class_names: list[str], out_dir: Path
) -> dict[str, Path | None]:
    return {
        "confusion": plot_confusion_matrix(
            metrics["confusion_matrix"],
            [*class_names, "background"],
            out_dir / "confusion_matrix.png",
        ),
        "pr": plot_pr_curves(metrics["precision_recall"], out_dir / "pr_curves.png"),
        "page": _page(scored, class_names, metrics["conf"], metrics["iou"], out_dir / "preds.png"),
    }


def _sections(
    metrics: dict[str, Any], figures: dict[str, Path | None], title: str
) -> list[Section]:
    names = {"map": "mAP@[.5:.95]", "map_50": "mAP@.5", "map_75": "mAP@.75"}
    names.update({f"map_{a}": f"mAP {a} boxes" for a in ("small", "medium", "large")})
    names.update({f"mar_{n}": f"AR (max {n} detections)" for n in (1, 10, 100)})
    table: dict[str, object] = {
        names.get(k, k): ("n/a" if math.isnan(metrics[k]) else metrics[k]) for k in SUMMARY_KEYS
    }
    table.update(
        {
            "images": metrics["n_images"],
            "ground-truth boxes": metrics["n_boxes"],
            "detections": metrics["n_detections"],
        }
    )
    per_class = [["class", "AP@[.5:.95]", "AP@.5"]] + [
        [name, ap, metrics["per_class_ap50"][name]]
        for name, ap in sorted(
            metrics["per_class"].items(), key=lambda kv: -1 if math.isnan(kv[1]) else -kv[1]
        )
    ]
    per_class = [
        [("no GT" if isinstance(v, float) and math.isnan(v) else v) for v in row]
        for row in per_class
    ]
    page = figures["page"]
    return [
        Section(title, table=table),
        Section("Per class", rows=per_class),
        Section(
            f"Confusion matrix (score >= {metrics['conf']:g}, IoU >= {metrics['iou']:g})",
            text="Rows: true class, columns: predicted; the background row holds false "
            "positives, the background column missed boxes.",
            images=[figures["confusion"]] if figures["confusion"] else [],
        ),
        Section("Precision-recall", images=[figures["pr"]] if figures["pr"] else []),
        Section(
            "Predictions",
            images=[page] if page else [],
            text="" if page else "No images to draw.",
        ),
    ]


def _finish(
    out_dir: Path, metrics: dict[str, Any], sections: list[Section], title: str
) -> EvalResult:
    (out_dir / METRICS_FILE).write_text(
        json.dumps(_jsonable(metrics), indent=2, ensure_ascii=False) + "\n"
    )
    report = write_report(out_dir / "report.html", title, sections)
    console.print(
        f"mAP {metrics['map']:.4f}  mAP@.5 {metrics['map_50']:.4f}  mAP@.75 "
        f"{metrics['map_75']:.4f} on {metrics['n_images']} images → {report}"
    )
    return EvalResult(out_dir, metrics, report)


# -- a run -----------------------------------------------------------------------------------
def _collect(
    det: Detector, images: Sequence[DetImage], batch_size: int
) -> tuple[Scored, list[list[str]]]:
    scored = Scored([], [], [], [], [], [], [], [])
    skipped: list[list[str]] = []
    for i, pred in det.iter_raw([img.path for img in images], batch_size=batch_size):
        img = images[i]
        if isinstance(pred, str):
            skipped.append([str(img.path), pred])
            continue
        scored.images.append(
            {
                "id": len(scored.images) + 1,
                "width": img.width,
                "height": img.height,
                "file_name": str(img.path),
            }
        )
        scored.gt_boxes.append(np.asarray(img.boxes, dtype=np.float64).reshape(-1, 4))
        scored.gt_labels.append(np.asarray(img.labels, dtype=np.int64).reshape(-1))
        scored.ignore.append(np.asarray(img.difficult, dtype=bool).reshape(-1))
        scored.boxes.append(pred["boxes"])
        scored.labels.append(pred["labels"])
        scored.scores.append(pred["scores"])
        scored.paths.append(img.path)
    return scored, skipped


def _coco_pair(scored: Scored, class_names: list[str]) -> tuple[dict, list[dict]]:
    """COCO ground truth (difficult boxes as ``iscrowd``) and results for ``coco_eval``."""
    return to_coco(
        scored.images,
        class_names,
        scored.gt_boxes,
        scored.gt_labels,
        pred_boxes=scored.boxes,
        pred_labels=scored.labels,
        pred_scores=scored.scores,
        gt_ignore=scored.ignore,
    )


def _checkpoint_detector(ckpt: Path, meta: dict[str, Any]) -> tuple[Detector, int, int]:
    """The detector saved in a Lightning checkpoint of the run, its global step and epoch."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    weights = {
        k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")
    }
    net = create(
        meta["arch"],
        "detect",
        num_classes=meta["num_classes"],
        pretrained=False,
        **meta.get("arch_kwargs", {}),
    )
    net.load_state_dict(weights)
    return Detector(net, meta), int(state["global_step"]), int(state["epoch"])


def evaluate_checkpoints(
    run: Run,
    images: Sequence[DetImage],
    out_dir: Path,
    *,
    batch_size: int = 8,
) -> tuple[list[dict[str, Any]], Path | None]:
    """mAP of every checkpoint the run kept (``checkpoints/step-*``, ``last``, ``best``) on
    ``images``, by training step; writes ``checkpoints.json`` and ``map_over_training.png``."""
    meta = json.loads((run.dir / META_FILE).read_text())
    class_names = list(meta["class_names"])
    found = sorted((run.dir / "checkpoints").glob("*.ckpt")) + [
        run.dir / name for name in ("last.ckpt", "best.ckpt") if (run.dir / name).is_file()
    ]
    rows = []
    for ckpt in found:
        det, step, epoch = _checkpoint_detector(ckpt, meta)
        scored, _ = _collect(det, images, batch_size)
        if not scored.images:
            continue
        m = coco_eval(*_coco_pair(scored, class_names))
        rows.append(
            {
                "checkpoint": ckpt.relative_to(run.dir).as_posix(),
                "step": step,
                "epoch": epoch,
                **{k: m[k] for k in ("map", "map_50", "map_75")},
            }
        )
    rows.sort(key=lambda r: (r["step"], r["checkpoint"]))
    (out_dir / "checkpoints.json").write_text(json.dumps(_jsonable(rows), indent=2) + "\n")
    if not rows:
        return rows, None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps = [r["step"] for r in rows]
    for key, label in (("map", "mAP@[.5:.95]"), ("map_50", "mAP@.5")):
        ax.plot(steps, [r[key] for r in rows], marker="o", label=label)
    ax.set(xlabel="optimizer step", ylabel="mAP", ylim=(0, 1), title="mAP of each checkpoint")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = out_dir / "map_over_training.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return rows, png


def evaluate(
    run: str | Path | Run,
    *,
    split: str = "test",
    conf: float = DEFAULT_CONF,
    iou: float = 0.5,
    batch_size: int = 8,
    out: str | Path | None = None,
    all_checkpoints: bool = False,
) -> EvalResult:
    """Score a run on a split of its data (``test`` by default).

    Writes into ``out`` (default ``RUN/eval``, ``RUN/eval-<split>`` for another split):
    ``metrics.json`` (COCO ``map``, ``map_50``, ``map_75``, ``map_small``/``medium``/
    ``large``, ``mar_1``/``10``/``100``, ``per_class`` AP, precision-recall curves and the
    (C+1)x(C+1) confusion matrix, background last, at ``conf`` and ``iou``), ``predictions.json``
    and ``ground_truth.json`` (COCO, for ``evaluate_files``), ``confusion_matrix.png``,
    ``pr_curves.png``, ``preds.png`` and ``report.html`` (also copied to ``RUN/report.html``).
    ``all_checkpoints`` also scores every checkpoint the run kept (``evaluate_checkpoints``).
    """
    if not 0 <= conf <= 1 or not 0 < iou <= 1:
        raise ValueError(f"--conf must lie in [0, 1] and --iou in (0, 1] (got {conf}, {iou})")
    run = Run.load(run)
    det = Detector.from_run(run)
    ds, splits = read_split(run.dir / SPLIT_FILE)
    if split not in splits:
        raise ValueError(f"{run.dir} has no split {split!r}; it has {', '.join(splits)}")
    images = [ds.images[i] for i in splits[split]]
    if not images:
        raise ValueError(f"{run.dir} has an empty {split} split; evaluate another --split")
    if list(ds.class_names) != det.class_names:
        raise ValueError(f"{run.dir}: the classes of model.json and {SPLIT_FILE} differ")
    default = run.dir / ("eval" if split == "test" else f"eval-{split}")
    out_dir = _out_dir(Path(out) if out else default, owned=out is None)

    scored, skipped = _collect(det, images, batch_size)
    if not scored.images:
        raise ValueError(f"none of the {len(images)} {split} images could be read")
    gt, results = _coco_pair(scored, det.class_names)
    metrics = coco_eval(gt, results)
    plain = without_difficult(scored, iou)  # for the confusion matrix and the drawn page
    metrics.update(_counts(scored, conf, iou))
    metrics.update(
        confusion_matrix=_confusion(plain, len(det.class_names), conf, iou),
        split=split,
        model=det.meta.get("arch"),
        skipped=skipped,
    )
    (out_dir / "ground_truth.json").write_text(json.dumps(gt) + "\n")
    (out_dir / "predictions.json").write_text(json.dumps(results) + "\n")
    figures = _figures(plain, metrics, det.class_names, out_dir)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    sections = [
        Section("Run", table=run_summary(run, **{"split (images)": sizes})),
        *_sections(metrics, figures, f"Evaluation ({split} split)"),
        training_section(run, out_dir / METRICS_FILE, out_dir / "predictions.json"),
    ]
    if all_checkpoints:
        rows, png = evaluate_checkpoints(run, images, out_dir, batch_size=batch_size)
        metrics["checkpoints"] = rows
        table = [["checkpoint", "epoch", "step", "mAP", "mAP@.5", "mAP@.75"]] + [
            [r["checkpoint"], r["epoch"], r["step"], r["map"], r["map_50"], r["map_75"]]
            for r in rows
        ]
        sections.append(Section("Every checkpoint", rows=table, images=[png] if png else []))
    if skipped:
        sections.append(Section("Skipped files", rows=[["file", "reason"], *skipped]))
    title = f"pixtell detect: {run.dir.name}"
    result = _finish(out_dir, metrics, sections, title)
    write_report(run.dir / "report.html", title, sections)
    return result


# -- any COCO files --------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable JSON {what} file ({exc})") from None


def _from_files(gt: dict[str, Any], results: list[dict[str, Any]], root: Path) -> Scored:
    """Per-image arrays (0-based labels in category-id order) from COCO GT and results."""
    cat_index = {int(c["id"]): k for k, c in enumerate(sorted(gt["categories"], key=_cid))}
    images = list(gt["images"])
    pos = {int(im["id"]): i for i, im in enumerate(images)}
    n = len(images)
    gb: list[list] = [[] for _ in range(n)]
    gl: list[list] = [[] for _ in range(n)]
    pb: list[list] = [[] for _ in range(n)]
    pl: list[list] = [[] for _ in range(n)]
    ps: list[list] = [[] for _ in range(n)]
    for a in gt.get("annotations", []):
        i = pos.get(int(a["image_id"]))
        if i is None or a.get("iscrowd") or int(a["category_id"]) not in cat_index:
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        gb[i].append([x, y, x + w, y + h])
        gl[i].append(cat_index[int(a["category_id"])])
    for r in results:
        i = pos.get(int(r["image_id"]))
        if i is None or int(r["category_id"]) not in cat_index:
            continue  # pycocotools ignores results of unknown categories too
        x, y, w, h = (float(v) for v in r["bbox"])
        pb[i].append([x, y, x + w, y + h])
        pl[i].append(cat_index[int(r["category_id"])])
        ps[i].append(float(r["score"]))

    def arr(rows: list, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
        return np.asarray(rows, dtype=dtype).reshape(shape)

    paths: list[Path | None] = []
    for im in images:
        p = root / str(im.get("file_name", ""))
        if not p.is_file():
            p = root / "images" / str(im.get("file_name", ""))
        paths.append(p if im.get("file_name") and p.is_file() else None)
    return Scored(
        images=[
            {"id": int(im["id"]), "width": int(im["width"]), "height": int(im["height"])}
            for im in images
        ],
        gt_boxes=[arr(b, np.float64, (-1, 4)) for b in gb],
        gt_labels=[arr(b, np.int64, (-1,)) for b in gl],
        boxes=[arr(b, np.float64, (-1, 4)) for b in pb],
        labels=[arr(b, np.int64, (-1,)) for b in pl],
        scores=[arr(b, np.float64, (-1,)) for b in ps],
        paths=paths,
    )


def _cid(cat: Mapping[str, Any]) -> int:
    return int(cat["id"])


def evaluate_files(
    gt_json: str | Path,
    predictions_json: str | Path,
    out: str | Path,
    *,
    conf: float = DEFAULT_CONF,
    iou: float = 0.5,
) -> EvalResult:
    """Score any COCO results file against a COCO ground-truth file (no run needed).

    The metrics are ``coco_eval``'s (equal to pycocotools). Writes ``metrics.json``,
    ``confusion_matrix.png``, ``pr_curves.png``, ``report.html`` and, when the images are
    found beside the ground-truth file (or in ``images/`` there), ``preds.png`` into ``out``.
    """
    if not 0 <= conf <= 1 or not 0 < iou <= 1:
        raise ValueError(f"--conf must lie in [0, 1] and --iou in (0, 1] (got {conf}, {iou})")
    gt_json, predictions_json = Path(gt_json), Path(predictions_json)
    gt = _read_json(gt_json, "ground-truth")
    results = _read_json(predictions_json, "predictions")
    if isinstance(results, dict) and "annotations" in results:
        results = results["annotations"]
    if not isinstance(gt, dict) or not {"images", "categories"} <= gt.keys():
        raise ValueError(f"{gt_json} is not COCO ground truth (needs images and categories)")
    if not isinstance(results, list):
        raise ValueError(f"{predictions_json} is not a COCO results list")
    try:
        metrics = coco_eval(gt, results)
        scored = _from_files(gt, results, gt_json.parent)
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{gt_json} / {predictions_json}: a COCO entry lacks a field or has a wrong type "
            f"({exc!r})"
        ) from None
    out_dir = _out_dir(Path(out), owned=False)
    class_names = list(metrics["per_class"])  # category-id order, names made unique
    metrics.update(_counts(scored, conf, iou))
    metrics.update(
        n_boxes=len(gt.get("annotations", [])),  # crowd boxes too
        confusion_matrix=_confusion(scored, len(class_names), conf, iou),
        ground_truth=str(gt_json.resolve()),
        predictions=str(predictions_json.resolve()),
    )
    figures = _figures(scored, metrics, class_names, out_dir)
    sections = [
        Section(
            "Files",
            table={"ground truth": str(gt_json), "predictions": str(predictions_json)},
        ),
        *_sections(metrics, figures, "Evaluation"),
    ]
    return _finish(out_dir, metrics, sections, f"pixtell detect: {predictions_json.name}")
