"""Image classification: ``train``, ``evaluate``, ``predict``, ``sort`` (and ``undo_sort``)."""

from __future__ import annotations

import contextlib
import csv
import inspect
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from rich.console import Console

from pixtell.classify.data import ClassifyDataModule, class_weights
from pixtell.classify.module import ClassifierModule
from pixtell.classify.predictor import Classifier, Prediction
from pixtell.classify.sort import SortResult, UndoResult, sort_folder, undo_sort
from pixtell.config import ClassifyTrainConfig, load_config, save_config
from pixtell.data.folders import ImageFolderScan, Sample, read_split, scan_image_folder, write_split
from pixtell.data.images import ImageLoadError, is_image_file, load_image
from pixtell.data.transforms import build_eval_transform, build_train_transform
from pixtell.engine import BEST_CKPT, LAST_CKPT, build_trainer, share_cpus
from pixtell.metrics.classification import classification_metrics
from pixtell.models import get_spec, save_model
from pixtell.report import (
    Section,
    contact_sheet,
    plot_confusion_matrix,
    plot_training_curves,
    write_report,
)
from pixtell.runs import CONFIG_FILE, RESULTS_FILE, Run, new_run_dir

__all__ = [
    "Classifier",
    "EvalResult",
    "Prediction",
    "Run",
    "SortResult",
    "UndoResult",
    "evaluate",
    "predict",
    "sort",
    "train",
    "undo_sort",
]

SPLIT_FILE = "split.json"
RUN_DIR_ENV = "PIXTELL_RUN_DIR"  # lets DDP worker processes join the launcher's run
console = Console(highlight=False)


# -- train ---------------------------------------------------------------------------------
def train(
    data: str | Path | None = None,
    *,
    config_file: str | Path | None = None,
    resume: str | Path | Run | None = None,
    callbacks: list[L.Callback] | None = None,
    **overrides: Any,
) -> Run:
    """Train a classifier on ``DATA/<class>/<image>``; returns the finished ``Run``.

    Settings: defaults < ``config_file`` < ``overrides`` (see ``ClassifyTrainConfig``).
    ``resume`` continues a run from its ``last.ckpt`` (``epochs`` may be raised).
    ``callbacks`` are extra Lightning callbacks (e.g. for notebooks and tests).
    """
    joined = os.environ.get(RUN_DIR_ENV)
    if resume is not None or joined:
        run_dir = Run.load(resume or joined).dir
        cfg = load_config(ClassifyTrainConfig, run_dir / CONFIG_FILE, **overrides)
        scan = read_split(run_dir / SPLIT_FILE)
        ckpt = run_dir / LAST_CKPT if resume is not None else None
        if ckpt is not None and not ckpt.is_file():
            raise FileNotFoundError(f"cannot resume: {ckpt} is missing (the run never saved)")
    else:
        cfg = load_config(ClassifyTrainConfig, config_file, data=data, **overrides)
        scan = _scan(cfg)
        run_dir = ckpt = None
    if cfg.freeze_backbone and cfg.strategy == "ddp":
        # frozen layers get no gradient in stage 1, which plain DDP treats as an error
        cfg = cfg.model_copy(update={"strategy": "ddp_find_unused_parameters_true"})
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = _build_module(cfg, scan)  # before the run directory: offline weights fail first
    if run_dir is None:
        run_dir = new_run_dir(cfg.out, "classify", cfg.name or cfg.model)
        write_split(run_dir / SPLIT_FILE, scan)
    if not joined:  # DDP worker processes read the launcher's config; they never write it
        save_config(cfg, run_dir / CONFIG_FILE)

    spec = get_spec(cfg.model, "classify")
    img_size = cfg.img_size or spec.input_size
    dm = _build_datamodule(cfg, scan, img_size, spec.mean, spec.std)
    trainer = build_trainer(
        cfg,
        run_dir,
        monitor=cfg.monitor,
        mode="min" if cfg.monitor == "val_loss" else "max",
        max_epochs=cfg.epochs + cfg.fine_tune_epochs,
        early_stop_start=cfg.epochs if cfg.freeze_backbone and cfg.fine_tune_epochs else 0,
        extra_callbacks=callbacks,
        steps_per_epoch=len(scan.splits["train"]) // cfg.batch_size,
    )
    share_cpus(dm.num_workers)
    console.print(
        f"[bold]pixtell[/] training {cfg.model} on {len(scan.splits['train'])} images "
        f"({len(scan.classes)} classes) → {run_dir}"
    )
    with _joinable(run_dir):
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    if not trainer.is_global_zero:
        return Run(run_dir)
    return _finish(run_dir, trainer, module, cfg, scan, img_size)


@contextlib.contextmanager
def _joinable(run_dir: Path) -> Iterator[None]:
    old = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = old


def _scan(cfg: ClassifyTrainConfig) -> ImageFolderScan:
    fractions = (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
    scan = scan_image_folder(
        cfg.data,
        fractions=fractions,
        seed=cfg.seed,
        max_samples_per_class=cfg.max_samples_per_class,
        max_pixels=cfg.max_pixels,
        progress=cfg.progress,
    )
    for path, reason in scan.skipped:
        console.print(f"[yellow]skipped[/] {path}: {reason}")
    for group in scan.duplicates:
        console.print(
            "[yellow]duplicate images[/] (kept in one split): " + ", ".join(str(p) for p in group)
        )
    if not scan.splits["train"] or not scan.splits["val"]:
        raise ValueError(f"{cfg.data}: too few images to make train and validation splits")
    return scan


def _build_module(cfg: ClassifyTrainConfig, scan: ImageFolderScan) -> ClassifierModule:
    spec = get_spec(cfg.model, "classify")
    pretrained = spec.has_pretrained if cfg.pretrained is None else cfg.pretrained
    weights = (
        class_weights(scan.splits["train"], len(scan.classes)) if cfg.balance == "weights" else None
    )
    # every module hyper-parameter that is also a setting comes straight from the config
    names = inspect.signature(ClassifierModule.__init__).parameters.keys() & cfg.model_fields.keys()
    hparams = {k: getattr(cfg, k) for k in names - {"pretrained", "weights"}}
    return ClassifierModule(
        cfg.model,
        len(scan.classes),
        pretrained=pretrained,
        weights=str(cfg.weights) if cfg.weights else None,
        class_weights=weights,
        **hparams,
    )


def _build_datamodule(
    cfg: ClassifyTrainConfig,
    scan: ImageFolderScan,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> ClassifyDataModule:
    augment = cfg.augment
    if augment == "auto":
        augment = "multiscale" if img_size < 96 else "rrc"
    train_tf = build_train_transform(
        img_size,
        mean=mean,
        std=std,
        augment=augment,
        scale_jitter=(cfg.scale_min, max(cfg.scale_min, cfg.scale_max)),
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
    )
    return ClassifyDataModule(
        scan.splits,
        len(scan.classes),
        train_tf,
        build_eval_transform(img_size, mean=mean, std=std),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        balanced_sampler=cfg.balance == "sampler",
        max_pixels=cfg.max_pixels,
        seed=cfg.seed,
    )


def _finish(
    run_dir: Path,
    trainer: L.Trainer,
    module: ClassifierModule,
    cfg: ClassifyTrainConfig,
    scan: ImageFolderScan,
    img_size: int,
) -> Run:
    """Export the best weights as safetensors + model.json, plot curves, record results."""
    best = run_dir / BEST_CKPT
    if best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    spec = get_spec(cfg.model, "classify")
    save_model(
        module.net,
        run_dir,
        {
            "task": "classify",
            "arch": cfg.model,
            "num_classes": len(scan.classes),
            "class_names": scan.classes,
            "img_size": img_size,
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
    )
    plot_training_curves(run_dir / "metrics.csv", run_dir / "curves.png")
    ckpt_cb = trainer.checkpoint_callback
    results = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith("val_") and v.numel() == 1
    }
    if ckpt_cb is not None and ckpt_cb.best_model_score is not None:
        results[f"best_{cfg.monitor}"] = float(ckpt_cb.best_model_score)
    results["epochs_completed"] = trainer.current_epoch
    (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    console.print(
        f"[green]done[/]: {run_dir} (best {cfg.monitor} "
        f"{results.get(f'best_{cfg.monitor}', float('nan')):.4f})"
    )
    return Run.load(run_dir)


# -- evaluate ------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """Where an evaluation wrote its files, and its metrics."""

    dir: Path
    metrics: dict[str, Any]
    report: Path


def _samples_from_folder(
    data: Path, classes: list[str]
) -> tuple[list[Sample], list[tuple[Path, str]]]:
    """Images of ``data/<class>/`` (or ``data/test/<class>/``) labelled by the run's classes,
    and the unreadable files that were skipped."""
    scan = scan_image_folder(data, fractions=(1.0, 0.0, 0.0), progress=False)
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


def evaluate(
    run: str | Path | Run,
    *,
    data: str | Path | None = None,
    tta: str = "none",
    batch_size: int = 64,
    num_workers: int = 0,
    topk: int = 5,
    out: str | Path | None = None,
) -> EvalResult:
    """Score a run on its held-out test split (or ``data``); writes metrics, plots, report."""
    run = Run.load(run)
    clf = Classifier.from_run(run)
    if data is None:
        samples, skipped = read_split(run.dir / SPLIT_FILE).splits["test"], []
        if not samples:
            raise ValueError(f"{run.dir} has an empty test split; pass --data DIR to evaluate")
        name = "eval"
    else:
        samples, skipped = _samples_from_folder(Path(data), clf.classes)
        name = f"eval-{Path(data).resolve().name}"
    suffix = "" if tta == "none" else f"-{tta}"
    out_dir = Path(out) if out else run.dir / f"{name}{suffix}"
    out_dir.mkdir(parents=True, exist_ok=True)

    probs = np.zeros((len(samples), len(clf.classes)))
    failed: dict[int, str] = {}
    for i, p in clf.iter_probs(
        [s.path for s in samples], tta=tta, batch_size=batch_size, num_workers=num_workers
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
        data=str(data or "test split"),
        skipped=[[str(p), r] for p, r in skipped]
        + [[str(samples[i].path), r] for i, r in failed.items()],
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _write_predictions(
        out_dir / "predictions.csv", [samples[i] for i in keep], y, probs, clf.classes
    )
    report = _eval_report(run, out_dir, metrics, [samples[i] for i in keep], y, probs, clf.classes)
    console.print(
        f"accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f} "
        f"on {metrics['n']} images → {report}"
    )
    return EvalResult(out_dir, metrics, report)


def _write_predictions(
    path: Path, samples: list[Sample], y: np.ndarray, probs: np.ndarray, classes: list[str]
) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "pred", "prob", *[f"p_{c}" for c in classes]])
        for s, t, p in zip(samples, y, probs, strict=True):
            j = int(p.argmax())
            w.writerow([s.path, classes[t], classes[j], f"{p[j]:.6f}", *[f"{v:.6f}" for v in p]])


def _eval_report(
    run: Run,
    out_dir: Path,
    metrics: dict,
    samples: list[Sample],
    y: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
) -> Path:
    cm_png = plot_confusion_matrix(
        metrics["confusion_matrix"], classes, out_dir / "confusion_matrix.png"
    )
    pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=int)
    wrong = [i for i in np.argsort(-probs.max(1) if len(probs) else []) if pred[i] != y[i]][:24]
    sheet = contact_sheet(
        [
            (
                np.asarray(load_image(samples[i].path).resize((96, 96))),
                f"{classes[y[i]]} → {classes[pred[i]]} ({probs[i, pred[i]]:.2f})",
            )
            for i in wrong
        ],
        out_dir / "hardest.png",
        title="most confident mistakes (true → predicted)",
    )
    summary = {k: v for k, v in metrics.items() if isinstance(v, float | int)}
    per_class = [["class", "precision", "recall", "f1", "support"]] + [
        [c, m["precision"], m["recall"], m["f1"], m["support"]]
        for c, m in metrics["per_class"].items()
    ]
    sections = [
        Section(f"Evaluation ({metrics['data']}, TTA {metrics['tta']})", table=summary),
        Section("Per class", rows=per_class),
        Section("Confusion matrix", images=[cm_png]),
        Section(
            "Hardest misclassified images",
            images=[sheet] if sheet else [],
            text="" if sheet else "No misclassified images.",
        ),
        Section(
            "Training",
            images=[run.dir / "curves.png"],
            table=run.best_metrics or None,
            links=[
                run.dir / "metrics.csv",
                run.dir / CONFIG_FILE,
                out_dir / "metrics.json",
                out_dir / "predictions.csv",
            ],
        ),
    ]
    if metrics["skipped"]:
        sections.append(Section("Skipped files", rows=[["file", "reason"], *metrics["skipped"]]))
    report = write_report(out_dir / "report.html", f"pixtell classify: {run.dir.name}", sections)
    write_report(run.dir / "report.html", f"pixtell classify: {run.dir.name}", sections)
    return report


# -- predict and sort ----------------------------------------------------------------------
def image_paths(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (their images, sorted) into a list of paths."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    paths: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.is_file() and is_image_file(p))
        else:
            paths.append(item)
    return paths


def predict(
    run: str | Path | Run,
    images: str | Path | Sequence[str | Path],
    *,
    topk: int = 5,
    tta: str = "none",
    batch_size: int = 32,
) -> list[Prediction]:
    """Top-k predictions per image (files or folders); unreadable files carry ``error``."""
    clf = Classifier.from_run(run)
    return clf.predict(image_paths(images), topk=topk, tta=tta, batch_size=batch_size)


def sort(
    inbox: str | Path,
    *,
    model: str | Path | Run,
    out: str | Path,
    threshold: float = 0.6,
    others: str = "others",
    move: bool = False,
    dry_run: bool = False,
    batch_size: int = 32,
    tta: str = "none",
    progress: bool = True,
) -> SortResult:
    """Sort ``inbox`` into ``out/<class>/`` (``out/others/`` below ``threshold``); undoable."""
    clf = Classifier.from_run(model)

    def predict_fn(paths: list[Path]) -> list[tuple[str, float] | Exception]:
        return [
            ImageLoadError(p.path, p.error) if p.error else (p.label, p.probability)
            for p in clf.predict(paths, topk=1, tta=tta, batch_size=batch_size)
        ]

    return sort_folder(
        Path(inbox),
        predict_fn,
        Path(out),
        threshold=threshold,
        others=others,
        move=move,
        dry_run=dry_run,
        batch_size=batch_size,
        progress=progress,
    )
