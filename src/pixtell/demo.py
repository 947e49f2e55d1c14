"""``pixtell demo``: generated data → train → evaluate → one report, for each task, no download."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from pixtell.report import Section, write_report

console = Console(highlight=False, soft_wrap=True)
TASKS = ("classify", "detect", "caption", "guided")

# Figures and settings measured on a 2-core CPU (see README): each part trains for at most
# about four minutes there.
CAPTION_SCENES = 8000
CAPTION_TRAIN: dict[str, Any] = {
    "epochs": 22,
    "lr": 1e-2,
    "batch_size": 128,  # an epoch ~20% faster on a CPU than at 32, and a better optimum
    "dropout": 0.1,
    "val_fraction": 0.05,
    "img_size": 32,
    "word_loss": 1.0,
}
# The hallucination filter's demo: a deliberately weak captioner (few epochs, no word loss).
GUIDED_TRAIN: dict[str, Any] = {"epochs": 2, "word_loss": 0.0}
GUIDED_TAU = 0.5
DETECT_SCENES = 4000
DETECT_TRAIN: dict[str, Any] = {
    "model": "tiny_fcos",
    "img_size": 128,
    "epochs": 5,
    "batch_size": 16,
}


@dataclass
class DemoPart:
    """What one task's part of the demo shows."""

    task: str
    metrics: dict[str, Any]
    report: Path
    images: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    notes: str = ""
    run: Any = None


def _data(out: Path, name: str, make: Callable[[Path], Path]) -> Path:
    data = out / "data" / name
    if not data.is_dir():
        console.print(f"generating {data}")
        make(data)
    return data


def _train(
    train: Callable[..., Any], data: Path, out: Path, name: str, **settings: Any
) -> tuple[Any, float]:
    """A demo run in ``out/runs`` (no loggers) and its training seconds."""
    start = time.perf_counter()
    run = train(data, out=out / "runs", name=name, logger=["none"], **settings)
    return run, time.perf_counter() - start


def classify_part(
    out: Path, *, n_per_class: int = 500, epochs: int = 15, seed: int = 0, progress: bool = True
) -> DemoPart:
    """Six shapes, TinyVGG-A at 32 px."""
    from pixtell import classify
    from pixtell.data.demo import make_classification_folder

    data = _data(
        out,
        f"shapes-{seed}-{n_per_class}",
        lambda d: make_classification_folder(
            d, n_per_class=n_per_class, img_size=64, seed=seed, progress=progress
        ),
    )
    run, seconds = _train(
        classify.train,
        data,
        out,
        "shapes",
        model="tinyvgg_a",
        img_size=32,
        epochs=epochs,
        batch_size=64,
        seed=seed,
        progress=progress,
    )
    res = classify.evaluate(run)
    m = res.metrics
    console.print(f"classification test accuracy: {m['accuracy']:.3f}")
    return DemoPart(
        "classify",
        {"test accuracy": m["accuracy"], "macro F1": m["macro_f1"], "test images": m["n"]},
        res.report,
        [res.dir / "confusion_matrix.png"],
        seconds,
        run=run,
    )


def detect_part(out: Path, *, seed: int = 0, progress: bool = True, **train: Any) -> DemoPart:
    """Scenes of one to four shapes with exact boxes; a tiny FCOS from scratch."""
    from pixtell import detect
    from pixtell.data.demo import make_detection_scenes

    n = train.pop("n_images", DETECT_SCENES)
    data = _data(
        out,
        f"scenes-detect-{seed}-{n}",
        lambda d: make_detection_scenes(d, n_images=n, img_size=128, seed=seed, progress=progress),
    )
    settings = {**DETECT_TRAIN, **train}
    run, seconds = _train(
        detect.train, data, out, "scenes", seed=seed, progress=progress, **settings
    )
    res = detect.evaluate(run)
    m = res.metrics
    console.print(f"detection test mAP@50 {m['map_50']:.3f}, mAP@[.5:.95] {m['map']:.3f}")
    return DemoPart(
        "detect",
        {"test mAP@50": m["map_50"], "test mAP@[.5:.95]": m["map"], "test mAP@75": m["map_75"]},
        res.report,
        [res.dir / "preds.png"],
        seconds,
    )


def caption_part(out: Path, *, seed: int = 0, progress: bool = True, **train: Any) -> DemoPart:
    """Scenes of one to three shapes with five captions each; a small CNN + attention LSTM."""
    from pixtell import caption
    from pixtell.metrics.caption import blind_baseline

    n = train.pop("n_images", CAPTION_SCENES)
    data = _caption_scenes(out, n, seed, progress)
    settings = {**CAPTION_TRAIN, **train}
    run, seconds = _train(
        caption.train, data, out, "scenes", seed=seed, progress=progress, **settings
    )
    res = caption.evaluate(run, beam_size=3)
    m = res.metrics
    refs, test_images = _split_references(run)
    blind = blind_baseline(refs["train"], refs["test"])
    preds = caption.predict(run, test_images, beam_size=3, attention=True)
    console.print(f"captioning test BLEU-4 {m['Bleu_4']:.3f} (blind baseline {blind:.3f})")
    samples = "; ".join(f"{p.path.name}: “{p.caption}”" for p in preds if not p.error)
    return DemoPart(
        "caption",
        {
            "test BLEU-4 (beam 3)": m["Bleu_4"],
            "test CIDEr": m["CIDEr"],
            "blind baseline BLEU-4": blind,
        },
        res.report,
        [p.attention for p in preds if p.attention],
        seconds,
        notes=f"Sample captions: {samples}",
    )


def _caption_scenes(out: Path, n: int, seed: int, progress: bool) -> Path:
    from pixtell.data.demo import make_caption_scenes

    return _data(
        out,
        f"scenes-caption-{seed}-{n}",
        lambda d: make_caption_scenes(d, n_images=n, seed=seed, progress=progress),
    )


def guided_part(
    out: Path, classifier: Any, *, seed: int = 0, progress: bool = True, **train: Any
) -> DemoPart:
    """The hallucination filter: a deliberately weak captioner, guided by the shape classifier.

    The captioner is the caption part's, trained for only ``GUIDED_EPOCHS`` epochs, so it
    often names the wrong shape; the classifier is the classification part's run.
    """
    from pixtell import caption
    from pixtell.guided import evaluate_guided

    n = train.pop("n_images", CAPTION_SCENES)
    data = _caption_scenes(out, n, seed, progress)
    settings = {**CAPTION_TRAIN, **GUIDED_TRAIN, **train}
    run, seconds = _train(
        caption.train, data, out, "scenes-weak", seed=seed, progress=progress, **settings
    )
    res = evaluate_guided(run, classifier, tau=GUIDED_TAU, beam_size=5, n_best=5)
    before, after = res.metrics["before"], res.metrics["after"]
    console.print(
        f"hallucination filter: CHAIR_s {before['CHAIR_s']:.3f} → {after['CHAIR_s']:.3f}, "
        f"label mentions {before['mention_rate']:.3f} → {after['mention_rate']:.3f}, "
        f"BLEU-4 {before['Bleu_4']:.3f} → {after['Bleu_4']:.3f}"
    )
    rows = {
        key: f"{before[key]:.3f} → {after[key]:.3f}"
        for key in ("Bleu_4", "CIDEr", "CHAIR_i", "CHAIR_s", "mention_rate")
    }
    return DemoPart(
        "guided",
        {"classifier": str(getattr(classifier, "dir", classifier)), **rows},
        res.report,
        [plot for plot in [res.dir / "per_class.png"] if plot.is_file()],  # none if no rows
        seconds,
        notes=(
            f"A captioner trained for {settings['epochs']} epochs, filtered with the "
            f"classification run at tau {GUIDED_TAU}: before → after."
        ),
    )


def _split_references(run: Any) -> tuple[dict[str, dict[str, list[str]]], list[Path]]:
    """Train and test references of a caption run (read once), and three test images."""
    from pixtell.caption.data import load_captions, read_split

    ds = load_captions(run.config["data"], check_images=False, progress=False)
    splits = read_split(run.dir / "split.json", ds)
    refs = {
        part: {ds.images[i].image_id: ds.images[i].captions for i in splits[part]}
        for part in ("train", "test")
    }
    return refs, [ds.images[i].path for i in splits["test"][:3]]


def run_demo(
    out: str | Path = "demo-runs",
    *,
    task: str = "all",
    n_per_class: int = 500,
    epochs: int = 15,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Run the demo of one task (or ``all``) into ``out``; returns the demo report's path."""
    if task not in (*TASKS, "all"):
        raise ValueError(f"unknown --task {task!r}: use one of {', '.join(TASKS)} or all")
    out = Path(out)
    parts: list[DemoPart] = []
    # the guided part filters captions with the classification part's classifier
    names = TASKS if task == "all" else ("classify", "guided") if task == "guided" else (task,)
    for name in names:
        if name == "classify":
            parts.append(
                classify_part(
                    out, n_per_class=n_per_class, epochs=epochs, seed=seed, progress=progress
                )
            )
        elif name == "detect":
            parts.append(detect_part(out, seed=seed, progress=progress))
        elif name == "caption":
            parts.append(caption_part(out, seed=seed, progress=progress))
        else:
            classifier = next(p.run for p in parts if p.task == "classify")
            parts.append(guided_part(out, classifier, seed=seed, progress=progress))
    sections = [
        Section(
            f"{p.task}: {p.seconds / 60:.1f} min of training",
            table=p.metrics,
            images=p.images,
            links=[p.report],
            text=p.notes,
        )
        for p in parts
    ]
    report = write_report(out / "report.html", "pixtell demo", sections)
    return report
