"""``classify.predict`` and ``classify.sort``: a trained run applied to new images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pixtell.classify.predictor import Classifier, Prediction
from pixtell.classify.sort import SortResult, sort_folder
from pixtell.data.folders import ImageListing, list_images
from pixtell.data.images import ImageLoadError
from pixtell.runs import Run


def image_listing(
    inputs: str | Path | Sequence[str | Path], *, recursive: bool = False
) -> ImageListing:
    """Files and folders → the images to use, in the order given (a folder's sorted), plus
    what was left out (sub-folders not searched, symlinks, missing inputs)."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    combined = ImageListing()
    for item in items:
        part = list_images(item, recursive=recursive)
        combined.paths += part.paths
        combined.not_searched += part.not_searched
        combined.symlinks += part.symlinks
        combined.missing += part.missing
        combined.unreadable += part.unreadable
    return combined


def image_paths(
    inputs: str | Path | Sequence[str | Path], *, recursive: bool = False
) -> list[Path]:
    """The images named by files and folders; missing files are kept (they get an error)."""
    listing = image_listing(inputs, recursive=recursive)
    return listing.paths + listing.missing


def _load(run: str | Path | Run, backend: str, max_pixels: int | None) -> Classifier:
    """The run's classifier in PyTorch, or its exported ``model.onnx`` through onnxruntime."""
    if backend == "torch":
        return Classifier.from_run(run, max_pixels=max_pixels)
    from pixtell.export import load_classifier  # lazy: export imports the predictor

    return load_classifier(run, backend, max_pixels=max_pixels)


def _run_cache(run: str | Path | Run) -> str:
    """The run's ``--cache`` (small images then decoded once, on disk); "none" for a model
    folder without a run's settings (e.g. an exported copy)."""
    try:
        return str(Run.load(run).config.get("cache", "none"))
    except (FileNotFoundError, ValueError):
        return "none"


def predict(
    run: str | Path | Run,
    images: str | Path | Sequence[str | Path],
    *,
    topk: int = 5,
    tta: str = "none",
    batch_size: int = 32,
    recursive: bool = False,
    max_pixels: int | None = None,
    backend: str = "torch",
) -> list[Prediction]:
    """Top-k predictions per image (files or folders); unreadable files carry ``error``."""
    clf = _load(run, backend, max_pixels)
    paths = image_paths(images, recursive=recursive)
    cache = _run_cache(run) if backend == "torch" else "none"
    return clf.predict(paths, topk=topk, tta=tta, batch_size=batch_size, cache=cache)


def sort(
    inbox: str | Path,
    *,
    model: str | Path | Run,
    out: str | Path,
    threshold: float = 0.6,
    others: str = "others",
    move: bool = False,
    dry_run: bool = False,
    recursive: bool = False,
    batch_size: int = 32,
    tta: str = "none",
    max_pixels: int | None = None,
    backend: str = "torch",
    progress: bool = True,
) -> SortResult:
    """Sort ``inbox`` into ``out/<class>/`` (``out/others/`` below ``threshold``); undoable."""
    clf = _load(model, backend, max_pixels)

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
        recursive=recursive,
        batch_size=batch_size,
        progress=progress and not dry_run,
    )
