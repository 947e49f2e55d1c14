"""``classify.evaluate``: metrics on the held-out split (or a folder), plots and the report."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from pixtell.classify.predictor import Classifier
from pixtell.classify.train import SPLIT_FILE
from pixtell.data.folders import Sample, read_split, scan_image_folder
from pixtell.data.images import ImageLoadError, load_image
from pixtell.metrics.classification import classification_metrics
from pixtell.report import (
    Section,
    contact_sheet,
    plot_confusion_matrix,
    run_summary,
    training_section,
    write_report,
)
from pixtell.runs import Run

console = Console(highlight=False, soft_wrap=True)
METRICS_FILE = "metrics.json"


@dataclass
class EvalResult:
    """Where an evaluation wrote its files, and its metrics."""

    dir: Path
    metrics: dict[str, Any]
    report: Path


def _samples_from_folder(
    data: Path, classes: list[str], max_pixels: int
) -> tuple[list[Sample], list[tuple[Path, str]]]:
    """Images of ``data/<class>/`` (or ``data/test/<class>/``) labelled by the run's classes,
    and the unreadable files that were skipped."""
    scan = scan_image_folder(data, fractions=(1.0, 0.0, 0.0), progress=False, max_pixels=max_pixels)
    samples = (
        scan.splits["test"]
        if scan.presplit and scan.splits["test"]
        else [s for split in scan.splits.values() for s in split]
    )
    unknown = sorted(set(scan.classes) - set(classes))
    if unknown:
        raise ValueError(
            f"{data} has classes the model does not know: {', '.join(unknown)}; "
            f"the model's classes are: {', '.join(classes)}"
        )
    index = {c: i for i, c in enumerate(classes)}
    return [Sample(s.path, index[scan.classes[s.label]]) for s in samples], scan.skipped


def _out_dir(run: Run, data: Path | None, tta: str) -> Path:
    """``eval`` for the test split, ``eval-<folder>`` for a folder; never another folder's."""
    suffix = "" if tta == "none" else f"-{tta}"
    if data is None:
        return run.dir / f"eval{suffix}"
    base = f"eval-{data.resolve().name}{suffix}"
    n = 1
    while True:
        cand = run.dir / (base if n == 1 else f"{base}-{n}")
        done = cand / METRICS_FILE
        if not cand.exists() or (
            done.is_file() and json.loads(done.read_text()).get("data") == str(data.resolve())
        ):
            return cand
        n += 1


def evaluate(
    run: str | Path | Run,
    *,
    data: str | Path | None = None,
    tta: str = "none",
    batch_size: int = 64,
    num_workers: int = 0,
    topk: int = 5,
    max_pixels: int | None = None,
    out: str | Path | None = None,
) -> EvalResult:
    """Score a run on its held-out test split (or ``data``); writes metrics, plots, report.

    ``max_pixels`` defaults to the limit the run was trained with (``model.json``).
    """
    run = Run.load(run)
    clf = Classifier.from_run(run, max_pixels=max_pixels)
    split = read_split(run.dir / SPLIT_FILE)
    if data is None:
        samples, skipped = split.splits["test"], []
        if not samples:
            raise ValueError(f"{run.dir} has an empty test split; pass --data DIR to evaluate")
    else:
        samples, skipped = _samples_from_folder(Path(data), clf.classes, clf.max_pixels)
        if not samples:
            raise ValueError(f"{data} holds no readable images in class folders")
    out_dir = Path(out) if out else _out_dir(run, Path(data) if data else None, tta)
    out_dir.mkdir(parents=True, exist_ok=True)

    probs = np.zeros((len(samples), len(clf.classes)))
    failed: dict[int, str] = {}
    for i, p in clf.iter_probs(
        [s.path for s in samples],
        tta=tta,
        batch_size=batch_size,
        num_workers=num_workers,
        cache=run.config.get("cache", "none"),  # the run's --cache: decoded once, on disk
    ):
        if isinstance(p, str):
            failed[i] = p
        else:
            probs[i] = p.numpy()
    keep = [i for i in range(len(samples)) if i not in failed]
    y = np.array([samples[i].label for i in keep], dtype=int)
    probs = probs[keep]
    metrics = classification_metrics(y, probs, clf.classes, topk=topk)
    metrics.update(
        tta=tta,
        data=str(Path(data).resolve()) if data else "test split",
        skipped=[[str(p), r] for p, r in skipped]
        + [[str(samples[i].path), r] for i, r in failed.items()],
    )
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    kept = [samples[i] for i in keep]
    _write_predictions(out_dir / "predictions.csv", kept, y, probs, clf.classes)
    duplicates = split.duplicates if data is None else []
    sizes = ", ".join(f"{k} {len(v)}" for k, v in split.splits.items())
    summary = run_summary(run, **{"split (images)": sizes})
    report = _eval_report(run, out_dir, metrics, kept, y, probs, clf.classes, duplicates, summary)
    console.print(
        f"accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f} "
        f"on {metrics['n']} images → {report}"
    )
    return EvalResult(out_dir, metrics, report)


def _write_predictions(
    path: Path, samples: list[Sample], y: np.ndarray, probs: np.ndarray, classes: list[str]
) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "pred", "prob", *[f"p_{c}" for c in classes]])
        for s, t, p in zip(samples, y, probs, strict=True):
            j = int(p.argmax())
            w.writerow([s.path, classes[t], classes[j], f"{p[j]:.6f}", *[f"{v:.6f}" for v in p]])


def _tile(path: Path, caption: str) -> tuple[np.ndarray, str] | None:
    try:
        return np.asarray(load_image(path).resize((96, 96))), f"{path.name}\n{caption}"
    except ImageLoadError:
        return None


def _sheets(
    out_dir: Path, samples: list[Sample], y: np.ndarray, probs: np.ndarray, classes: list[str]
) -> tuple[Path | None, Path | None]:
    """The most confident mistakes, and a few correct predictions per class."""
    if not len(probs):
        return None, None
    pred = probs.argmax(1)
    order = np.argsort(-probs.max(1))
    wrong = [i for i in order if pred[i] != y[i]][:24]
    right: list[int] = []
    for c in range(len(classes)):
        right += [i for i in order if pred[i] == y[i] == c][:3]
    hardest = contact_sheet(
        [
            t
            for i in wrong
            if (
                t := _tile(
                    samples[i].path,
                    f"{classes[y[i]]} → {classes[pred[i]]} ({probs[i, pred[i]]:.2f})",
                )
            )  # fmt: skip
        ],
        out_dir / "hardest.png",
        title="most confident mistakes (true → predicted)",
    )
    correct = contact_sheet(
        [
            t
            for i in right
            if (t := _tile(samples[i].path, f"{classes[y[i]]} ({probs[i, y[i]]:.2f})"))
        ],
        out_dir / "correct.png",
        title="correct predictions (class, probability)",
    )
    return hardest, correct


METRIC_NAMES = {
    "n": "Images evaluated",
    "accuracy": "Accuracy",
    "loss": "Log loss",
    "macro_precision": "Macro precision",
    "macro_recall": "Macro recall",
    "macro_f1": "Macro F1",
    "weighted_precision": "Weighted precision",
    "weighted_recall": "Weighted recall",
    "weighted_f1": "Weighted F1",
}


def _readable(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if not isinstance(v, float | int) or isinstance(v, bool):
            continue
        if k.startswith("top") and k.endswith("_accuracy"):
            out[f"Top-{k[3:-9]} accuracy"] = v
        else:
            out[METRIC_NAMES.get(k, k.replace("_", " ").capitalize())] = v
    return out


def _eval_report(
    run: Run,
    out_dir: Path,
    metrics: dict,
    samples: list[Sample],
    y: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    duplicates: list[list[Path]],
    summary: dict[str, object],
) -> Path:
    cm_png = plot_confusion_matrix(
        metrics["confusion_matrix"], classes, out_dir / "confusion_matrix.png"
    )
    hardest, correct = _sheets(out_dir, samples, y, probs, classes)
    per_class = [["class", "precision", "recall", "F1", "support"]] + [
        [c, m["precision"], m["recall"], m["f1"], m["support"]]
        for c, m in metrics["per_class"].items()
    ]
    sections = [
        Section("Run", table=summary),
        Section(f"Evaluation ({metrics['data']}, TTA {metrics['tta']})", table=_readable(metrics)),
        Section("Per class", rows=per_class),
        Section("Confusion matrix", images=[cm_png]),
        Section(
            "Most confident mistakes",
            images=[hardest] if hardest else [],
            text="" if hardest else "No misclassified images.",
        ),
        Section("Correct predictions", images=[correct] if correct else []),
        training_section(run, out_dir / METRICS_FILE, out_dir / "predictions.csv"),
    ]
    if metrics["skipped"]:
        sections.append(Section("Skipped files", rows=[["file", "reason"], *metrics["skipped"]]))
    if duplicates:
        rows = [["group", "files"]] + [
            [i + 1, ", ".join(str(p) for p in g)] for i, g in enumerate(duplicates)
        ]
        sections.append(Section("Duplicate files (kept together in one split)", rows=rows))
    title = f"pixtell classify: {run.dir.name}"
    report = write_report(out_dir / "report.html", title, sections)
    write_report(run.dir / "report.html", title, sections)
    return report
