"""``detect.predict``: a trained detector applied to new images (COCO results + drawn PNGs)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

from pixtell.data.folders import ImageListing, list_images
from pixtell.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from pixtell.models import load_model
from pixtell.runs import Run

PREDICTIONS_FILE = "predictions.json"
_MIN_DRAWN = 512  # px: the longer side of a drawn prediction at least


@dataclass
class Detection:
    """The objects found in one image (boxes ``xyxy`` in the image's pixels), or ``error``."""

    path: Path
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    error: str | None = None
    drawn: Path | None = None  # the PNG with the boxes drawn


class Predictions(list[Detection]):
    """One ``Detection`` per input image, in order; ``dir`` and ``results_json`` say where
    the files went."""

    def __init__(self, detections: Sequence[Detection], out_dir: Path, results_json: Path):
        super().__init__(detections)
        self.dir, self.results_json = out_dir, results_json


class Detector:
    """A run's detector for inference: ``raw`` gives torchvision's per-image output dicts."""

    def __init__(self, net: torch.nn.Module, meta: dict[str, Any]) -> None:
        self.net = net.eval()
        self.meta = meta
        self.class_names: list[str] = list(meta["class_names"])

    @classmethod
    def from_run(cls, run: str | Path | Run) -> Detector:
        net, meta = load_model(run)
        if meta.get("task") != "detect":
            raise ValueError(
                f"{run} holds a {meta.get('task')} model, not a detector; pass a detect run"
            )
        return cls(net, meta)

    @torch.inference_mode()
    def raw(self, images: Sequence[torch.Tensor]) -> list[dict[str, np.ndarray]]:
        """Boxes (xyxy, original pixels), 0-based labels and scores per float 0-1 image."""
        out = []
        for pred in self.net(list(images)):
            keep = pred["labels"] > 0  # label 0 is torchvision's background
            out.append(
                {
                    "boxes": pred["boxes"][keep].float().reshape(-1, 4).numpy(),
                    "labels": (pred["labels"][keep] - 1).long().numpy(),
                    "scores": pred["scores"][keep].float().numpy(),
                }
            )
        return out

    def iter_raw(
        self,
        paths: Sequence[Path],
        *,
        batch_size: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Iterator[tuple[int, dict[str, np.ndarray] | str]]:
        """``(index, prediction)`` per path in order; an unreadable file gives its reason."""
        batch: list[tuple[int, torch.Tensor]] = []
        for i, path in enumerate(paths):
            try:
                image = load_image(path, max_pixels=max_pixels)
            except ImageLoadError as exc:
                yield i, exc.reason
                continue
            batch.append((i, F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)))
            if len(batch) == batch_size:
                yield from zip([j for j, _ in batch], self.raw([t for _, t in batch]), strict=True)
                batch = []
        if batch:
            yield from zip([j for j, _ in batch], self.raw([t for _, t in batch]), strict=True)


def draw_boxes(
    image: Image.Image,
    boxes: np.ndarray,
    captions: Sequence[str],
    colors: Sequence[str],
    *,
    max_side: int | None = None,
) -> np.ndarray:
    """``image`` with ``boxes`` (xyxy pixels) drawn and captioned, as an HxWx3 uint8 array.

    ``max_side`` first scales the image (and the boxes) to that longer side, so that lines
    and captions stay readable on a page of many images, large or small.
    """
    scale = 1.0
    if max_side and max(image.size) != max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    tensor = F.pil_to_tensor(image.convert("RGB"))
    if len(boxes):
        tensor = draw_bounding_boxes(
            tensor,
            torch.as_tensor(np.asarray(boxes, dtype=np.float32) * scale).reshape(-1, 4),
            labels=list(captions),
            colors=list(colors),
            width=max(1, round(max(image.size) / 200)),
            font=_font(),
            font_size=max(10, round(max(image.size) / 22)),
        )
    return tensor.permute(1, 2, 0).numpy()


@functools.cache
def _font() -> str | None:
    """A TrueType font for captions (matplotlib ships DejaVu Sans); PIL's tiny bitmap font
    otherwise."""
    from matplotlib import font_manager

    try:
        return font_manager.findfont("DejaVu Sans", fallback_to_default=False)
    except ValueError:
        return None


def _unique_png(folder: Path, stem: str, taken: set[str]) -> Path:
    name, n = stem, 1
    while name.casefold() in taken:
        n += 1
        name = f"{stem}_{n}"
    taken.add(name.casefold())
    return folder / f"{name}.png"


def _new_dir(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3`` …: a fresh folder, never one holding earlier files."""
    n = 1
    while True:
        cand = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            cand.mkdir(parents=True)
            return cand
        except FileExistsError:
            n += 1


def image_listing(
    inputs: str | Path | Sequence[str | Path], *, recursive: bool = False
) -> ImageListing:
    """The images named by files and folders (a folder's sorted), and what was left out."""
    return list_images(inputs, recursive=recursive)


def predict(
    run: str | Path | Run,
    images: str | Path | Sequence[str | Path],
    *,
    conf: float = 0.3,
    out: str | Path | None = None,
    batch_size: int = 8,
    recursive: bool = False,
    draw: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    backend: str = "torch",
) -> Predictions:
    """Detect objects (score >= ``conf``) in image files and folders.

    Writes ``predictions.json`` (COCO results: ``image_id`` is the image's 1-based position
    among the readable images, plus its ``file_name``) and, with ``draw``, one PNG per image
    with boxes, labels and scores, into ``out`` (default: a new ``predict`` folder in the
    run). Unreadable or missing files get an ``error`` and the others go on.
    """
    if not 0 <= conf <= 1:
        raise ValueError(f"--conf must lie in [0, 1] (got {conf})")
    run = Run.load(run)
    if backend == "torch":
        det = Detector.from_run(run)
    else:  # the exported model.onnx (``pixtell export``) on onnxruntime
        from pixtell.export import load_detector

        det = load_detector(run, backend)
    listing = image_listing(images, recursive=recursive)
    paths = listing.paths + listing.missing
    if not paths:
        raise ValueError(f"no images found in {images}")
    out_dir = _new_dir(Path(out) if out else run.dir / "predict")
    results: list[dict[str, Any]] = []
    detections = [Detection(Path(p)) for p in paths]
    taken: set[str] = set()
    image_id = 0
    for i, pred in det.iter_raw(paths, batch_size=batch_size, max_pixels=max_pixels):
        d = detections[i]
        if isinstance(pred, str):
            d.error = pred
            continue
        image_id += 1
        keep = pred["scores"] >= conf
        boxes, labels, scores = pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep]
        d.boxes = [[round(float(v), 2) for v in b] for b in boxes]
        d.labels = [det.class_names[int(k)] for k in labels]
        d.scores = [round(float(s), 4) for s in scores]
        for box, label, score in zip(d.boxes, labels, d.scores, strict=True):
            x0, y0, x1, y1 = box
            results.append(
                {
                    "image_id": image_id,
                    "file_name": str(d.path),
                    "category_id": int(label) + 1,
                    "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                    "score": score,
                }
            )
        if draw:
            captions = [f"{n} {s:.2f}" for n, s in zip(d.labels, d.scores, strict=True)]
            image = load_image(d.path, max_pixels=max_pixels)
            drawn = draw_boxes(
                image,
                boxes,
                captions,
                ["#1f77b4"] * len(captions),
                max_side=max(_MIN_DRAWN, *image.size),  # small images grow: readable labels
            )
            d.drawn = _unique_png(out_dir, d.path.stem, taken)
            Image.fromarray(drawn).save(d.drawn)
    results_json = out_dir / PREDICTIONS_FILE
    results_json.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return Predictions(detections, out_dir, results_json)
