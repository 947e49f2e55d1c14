"""``pixtell demo``: generated data → train → evaluate → report, with no download."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from pixtell import classify
from pixtell.data.demo import make_classification_folder

console = Console(highlight=False)


def run_demo(
    out: str | Path = "demo-runs",
    *,
    n_per_class: int = 200,
    epochs: int = 12,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Run the demo into ``out``; returns the path of the classification report."""
    out = Path(out)
    data = out / "data" / f"shapes-{seed}-{n_per_class}"
    if not data.is_dir():
        console.print(f"generating {n_per_class} images per class into {data}")
        make_classification_folder(
            data, n_per_class=n_per_class, img_size=64, seed=seed, progress=progress
        )
    run = classify.train(
        data,
        model="tinyvgg_a",
        img_size=32,
        epochs=epochs,
        batch_size=64,
        seed=seed,
        out=out / "runs",
        name="shapes",
        logger=["none"],
        progress=progress,
    )
    result = classify.evaluate(run)
    console.print(f"classification test accuracy: {result.metrics['accuracy']:.3f}")
    return result.report
