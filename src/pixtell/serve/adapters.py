"""One adapter per task: a loaded run that turns a decoded image into JSON-ready results.

The app and the UI only talk to ``Adapter``; each subclass wraps its task's public predictor
(``Classifier``, ``Captioner``, ``Detector``) so that serving never re-implements a model.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image

from pixtell.data.images import DEFAULT_MAX_PIXELS
from pixtell.models.io import META_FILE
from pixtell.runs import Run, run_dir_holding

TASKS: tuple[str, ...] = ("classify", "caption", "detect")
Backend = Literal["torch", "onnx"]


class Adapter(ABC):
    """A run loaded for serving: ``name`` (unique in the app), ``task``, ``predict``."""

    task: ClassVar[str]

    def __init__(self, name: str, run_dir: Path, meta: dict[str, Any], max_pixels: int) -> None:
        self.name, self.run_dir, self.meta = name, run_dir, meta
        self.max_pixels = max_pixels
        # load_image's scaled JPEG decoding, as the model's own predictor decodes (None: full)
        self.min_size: int | None = None

    @abstractmethod
    def predict(self, image: Image.Image) -> dict[str, Any]:
        """Results for one RGB image, as plain JSON types."""

    backend: Backend = "torch"

    def info(self) -> dict[str, Any]:
        """What ``GET /models`` shows about this run (no server paths)."""
        return {
            "name": self.name,
            "task": self.task,
            "backend": self.backend,
            "arch": self.meta.get("arch"),
            "img_size": self.meta.get("img_size"),
            "classes": list(self.meta.get("class_names") or []),
            "max_pixels": self.max_pixels,
        }


class ClassifyAdapter(Adapter):
    """Top-k class probabilities from a ``classify`` run."""

    task = "classify"

    def __init__(
        self,
        run: str | Path | Run,
        name: str,
        max_pixels: int | None = None,
        topk: int = 5,
        backend: Backend = "torch",
        threads: int | None = None,
    ) -> None:
        from pixtell.classify import Classifier

        if backend == "onnx":
            from pixtell.export import OnnxClassifier

            # a Classifier subclass: the same preprocessing and softmax, onnxruntime's logits
            self.model: Classifier = OnnxClassifier.from_path(
                run, max_pixels=max_pixels, threads=threads
            )
        else:
            self.model = Classifier.from_run(run, max_pixels=max_pixels)
        self.backend = backend
        self.views = self.model.view_transform("none")
        self.topk = min(topk, len(self.model.classes))
        super().__init__(name, _run_dir(run), self.model.meta, self.model.max_pixels)
        self.min_size = self.model.min_size

    def predict(self, image: Image.Image) -> dict[str, Any]:
        source = getattr(self.model, "clip", None)  # hybrid / clip_linear runs
        clip = None if source is None else source.encoder.embed_images([image])
        probs = self.model.probs_for_views([self.views(image)], clip)[0]
        vals, idx = probs.topk(self.topk)
        return {
            "topk": [
                {"label": self.model.classes[int(j)], "probability": float(v)}
                for v, j in zip(vals, idx, strict=True)
            ]
        }


class CaptionAdapter(Adapter):
    """A caption (beam search) from a ``caption`` run."""

    task = "caption"

    def __init__(
        self,
        run: str | Path | Run,
        name: str,
        max_pixels: int | None = None,
        beam_size: int = 3,
        backend: Backend = "torch",
        threads: int | None = None,
    ) -> None:
        from pixtell.export import load_captioner

        # onnx: the exported encoder and decoder step, driven by the same beam search
        self.model = load_captioner(run, backend, max_pixels=max_pixels, threads=threads)
        self.backend = backend
        self.beam_size = beam_size
        super().__init__(name, _run_dir(run), self.model.meta, self.model.max_pixels)

    def predict(self, image: Image.Image) -> dict[str, Any]:
        feats = self.model.encode(self.model.transform(image)[None])
        best = self.model.decode(feats, beam_size=self.beam_size)[0].hypothesis
        vocab = self.model.vocab
        return {
            "caption": vocab.decode(best.tokens),
            "words": [vocab.itos[t] for t in best.tokens],
        }

    def attention_map(self, image: Image.Image, out: Path) -> Path | None:
        """Write the per-word attention heat-maps of ``image`` to ``out`` (None: no attention)."""
        if not self.model.has_attention:
            return None
        from pixtell.caption.predict import plot_attention

        feats = self.model.encode(self.model.transform(image)[None])
        got = self.model.decode(feats, beam_size=self.beam_size, return_alphas=True)[0]
        if got.hypothesis.alphas is None:
            return None
        words = [self.model.vocab.itos[t] for t in got.hypothesis.tokens]
        return plot_attention(self.model.view(image), words, got.hypothesis.alphas, got.grid, out)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "classes": [], "vocab_size": len(self.model.vocab)}


class DetectAdapter(Adapter):
    """Boxes (xyxy in the image's pixels), labels and scores from a ``detect`` run."""

    task = "detect"

    def __init__(
        self,
        run: str | Path | Run,
        name: str,
        max_pixels: int | None = None,
        conf: float = 0.3,
        backend: Backend = "torch",
        threads: int | None = None,
    ) -> None:
        from pixtell.export import load_detector

        self.model = load_detector(run, backend, threads=threads)
        self.backend = backend
        self.conf = conf
        limit = max_pixels or self.model.meta.get("max_pixels") or DEFAULT_MAX_PIXELS
        super().__init__(name, _run_dir(run), self.model.meta, int(limit))

    def predict(self, image: Image.Image) -> dict[str, Any]:
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        raw = self.model.raw([tensor])[0]
        keep = raw["scores"] >= self.conf
        names = self.model.class_names
        return {
            "objects": [
                {
                    "label": names[int(k)],
                    "score": round(float(s), 4),
                    "box": [round(float(v), 2) for v in b],
                }
                for b, k, s in zip(
                    raw["boxes"][keep], raw["labels"][keep], raw["scores"][keep], strict=True
                )
            ]
        }


_ADAPTERS: dict[str, type[Adapter]] = {
    "classify": ClassifyAdapter,
    "caption": CaptionAdapter,
    "detect": DetectAdapter,
}


def _run_dir(run: str | Path | Run) -> Path:
    return run_dir_holding(run.dir if isinstance(run, Run) else run, META_FILE)


def run_task(run: str | Path | Run) -> str:
    """The task a run's ``model.json`` names (without loading the weights)."""
    meta_file = _run_dir(run) / META_FILE
    try:
        task = json.loads(meta_file.read_text()).get("task")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{meta_file} is unreadable ({exc}); re-export the run") from exc
    if task not in _ADAPTERS:
        raise ValueError(f"{meta_file} names task {task!r}; pixtell serves {', '.join(TASKS)}")
    return str(task)


def load_adapter(
    run: str | Path | Run,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    backend: Backend = "torch",
    threads: int | None = None,
) -> Adapter:
    """Load a run for serving with the adapter of its task; ``name`` defaults to the run's
    folder name. ``backend="onnx"`` runs the run's exported ONNX files (``pixtell export``) with
    ``threads`` onnxruntime threads per request (default: onnxruntime's own choice)."""
    task = run_task(run)
    name = name or _run_dir(run).name
    if backend == "torch":
        return _ADAPTERS[task](run, name, max_pixels=max_pixels)
    if backend != "onnx":
        raise ValueError(f"unknown --backend {backend!r}: use torch or onnx")
    return _ADAPTERS[task](run, name, max_pixels=max_pixels, backend="onnx", threads=threads)


def load_adapters(
    runs: Sequence[str | Path | Run],
    *,
    max_pixels: int | None = None,
    backend: Backend = "torch",
    threads: int | None = None,
) -> list[Adapter]:
    """Adapters for several runs with unique names (``name``, ``name-2`` … on clashes)."""
    if not runs:
        raise ValueError("pass at least one run directory to serve")
    out: list[Adapter] = []
    taken: set[str] = set()
    for run in runs:
        base = _run_dir(run).name
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        out.append(
            load_adapter(run, name=name, max_pixels=max_pixels, backend=backend, threads=threads)
        )
    return out
