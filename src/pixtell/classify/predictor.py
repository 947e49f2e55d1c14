"""A trained classifier loaded from a run, with test-time augmentation (TTA)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from pixtell.data.decoded import DecodedImages, resolve_cache_mode
from pixtell.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, decode_min_size, load_image
from pixtell.data.transforms import build_eval_transform, build_full_image_transform
from pixtell.models import load_model
from pixtell.models.clip import ClipFeatureSource
from pixtell.runs import Run

TTA = Literal["none", "flip", "multiscale", "dense"]
TTA_CHOICES = ("none", "flip", "multiscale", "dense")
SCALES = (1.0, 1.15, 1.3)  # multiscale / dense: shorter side = img_size * scale


@dataclass
class Prediction:
    """Top-k classes of one image, or the reason it could not be read."""

    path: Path
    topk: list[tuple[str, float]]
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.topk[0][0] if self.topk else None

    @property
    def probability(self) -> float:
        return self.topk[0][1] if self.topk else 0.0


class ViewTransform:
    """PIL image → the list of views TTA averages over."""

    def __init__(self, tta: str, img_size: int, mean: Sequence[float], std: Sequence[float]):
        if tta not in TTA_CHOICES:
            raise ValueError(f"unknown --tta {tta!r}: use one of {', '.join(TTA_CHOICES)}")
        self.tta = tta
        if tta == "multiscale":
            self.tfs = [
                build_eval_transform(img_size, mean=mean, std=std, resize_ratio=s) for s in SCALES
            ]
        elif tta == "dense":
            # VGG's dense evaluation: the whole uncropped image at several scales; the
            # fully-convolutional network (global pooling) averages the class-score map.
            self.tfs = [
                build_full_image_transform(round(img_size * s), mean=mean, std=std) for s in SCALES
            ]
        else:
            self.tfs = [build_eval_transform(img_size, mean=mean, std=std)]
        self.flip = tta in ("flip", "dense")

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        views = [tf(img) for tf in self.tfs]
        if self.flip:
            views += [v2.functional.horizontal_flip(v) for v in views]
        return views


class _Files(Dataset):
    def __init__(
        self, paths: Sequence[Path], tf: Callable, max_pixels: int, min_size: int | None = None
    ) -> None:
        self.paths, self.tf, self.max_pixels = list(paths), tf, max_pixels
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, list[torch.Tensor] | str]:
        try:
            img = load_image(self.paths[i], max_pixels=self.max_pixels, min_size=self.min_size)
            return i, self.tf(img)
        except ImageLoadError as exc:
            return i, exc.reason


def _collate(batch: list) -> list:
    return batch


class Classifier:
    """Model + metadata of a run; ``probs_for_paths`` is the one inference loop."""

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict,
        device: str = "cpu",
        max_pixels: int | None = None,
    ) -> None:
        self.model, self.meta = model.to(device).eval(), meta
        self.device = device
        self.classes: list[str] = meta["class_names"]
        # the limit the run was trained with, unless the caller sets another
        self.max_pixels: int = max_pixels or meta.get("max_pixels") or DEFAULT_MAX_PIXELS
        # scaled JPEG decoding as in training (TTA scales stay below DRAFT_FACTOR x img_size)
        self.min_size: int | None = decode_min_size(meta["img_size"])
        # hybrid / clip_linear: CLIP features of new images, from the cache or computed
        self.clip = (
            ClipFeatureSource(meta["clip"], meta.get("clip_key")) if meta.get("clip") else None
        )

    @classmethod
    def from_run(
        cls, run: str | Path | Run, device: str | None = None, max_pixels: int | None = None
    ) -> Classifier:
        model, meta = load_model(run)
        if meta.get("task") != "classify":
            raise ValueError(
                f"{run} holds a {meta.get('task')} model, not a classifier; "
                "use `pixtell " + str(meta.get("task")) + "` commands with it"
            )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, meta, device, max_pixels)

    def view_transform(self, tta: str = "none") -> ViewTransform:
        return ViewTransform(tta, self.meta["img_size"], self.meta["mean"], self.meta["std"])

    def _forward(self, x: torch.Tensor, clip: torch.Tensor | None) -> torch.Tensor:
        if clip is None:
            return self.model(x.to(self.device))
        return self.model(x.to(self.device), clip.to(self.device))

    @torch.inference_mode()
    def probs_for_views(
        self, views: list[list[torch.Tensor]], clip: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Softmax averaged over each image's views → (N, C); ``clip`` [N, D] is each
        image's CLIP features (the same for all its views) for models that take them."""
        shapes = {v.shape for vs in views for v in vs}
        if len(shapes) == 1:  # one batched forward pass
            flat = torch.stack([v for vs in views for v in vs])
            rep = None if clip is None else clip.repeat_interleave(len(flat) // len(views), 0)
            p = self._forward(flat, rep).softmax(-1).float().cpu()
            return p.view(len(views), -1, p.shape[-1]).mean(1)
        return torch.stack(
            [
                torch.cat(
                    [
                        self._forward(v[None], None if clip is None else clip[j : j + 1])
                        .softmax(-1)
                        .float()
                        .cpu()
                        for v in vs
                    ]
                ).mean(0)
                for j, vs in enumerate(views)
            ]
        )

    def iter_probs(
        self,
        paths: Sequence[Path],
        *,
        tta: str = "none",
        batch_size: int = 32,
        num_workers: int = 0,
        cache: str = "none",
    ) -> Iterator[tuple[int, torch.Tensor | str]]:
        """(index, probabilities) per image in order, or (index, reason) for unreadable ones.

        ``cache`` (a run's ``--cache``; not with TTA or CLIP features): small images are read
        from a decoded copy on disk keyed by their content (``DecodedImages``, the exact
        pixels of the evaluation transform), made on the first call and reused by the next
        one that meets the same files.
        """
        size = int(self.meta["img_size"])
        mode = resolve_cache_mode(cache, len(paths), size, augment="none")
        if mode != "none" and tta == "none" and self.clip is None:
            yield from self._iter_decoded(paths, size, batch_size)
            return
        loader = DataLoader(
            _Files(paths, self.view_transform(tta), self.max_pixels, self.min_size),
            batch_size=1 if tta == "dense" else batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
        )
        feats = None
        if self.clip is not None:
            feats = torch.from_numpy(self.clip.features(paths, progress=len(paths) > batch_size)[0])
        for batch in loader:
            good = [(i, v) for i, v in batch if not isinstance(v, str)]
            clip = None if feats is None else feats[[i for i, _ in good]]
            probs = self.probs_for_views([v for _, v in good], clip) if good else []
            by_index = {i: p for (i, _), p in zip(good, probs, strict=True)}
            for i, v in batch:
                yield i, (v if isinstance(v, str) else by_index[i])

    def _iter_decoded(
        self, paths: Sequence[Path], size: int, batch_size: int
    ) -> Iterator[tuple[int, torch.Tensor | str]]:
        images = DecodedImages(paths, size, mode="disk", max_pixels=self.max_pixels)
        bad = {str(p): reason for p, reason in images.problems}
        mean = torch.tensor(self.meta["mean"]).view(3, 1, 1)
        std = torch.tensor(self.meta["std"]).view(3, 1, 1)
        for start in range(0, len(paths), batch_size):
            rows = range(start, min(start + batch_size, len(paths)))
            good = [i for i in rows if images.ok[i]]
            views = [[(images.tensor(i).float() / 255 - mean) / std] for i in good]
            probs = dict(zip(good, self.probs_for_views(views), strict=True)) if good else {}
            for i in rows:
                yield i, probs[i] if i in probs else bad.get(str(paths[i]), "unreadable image")

    def predict(
        self,
        paths: Sequence[str | Path],
        *,
        topk: int = 5,
        tta: str = "none",
        batch_size: int = 32,
        cache: str = "none",
    ) -> list[Prediction]:
        """Top-k predictions for each path; unreadable files get ``error`` instead."""
        if topk < 1:
            raise ValueError(f"--topk must be at least 1 (got {topk})")
        paths = [Path(p) for p in paths]
        k = min(topk, len(self.classes))
        out: list[Prediction] = []
        for i, p in self.iter_probs(paths, tta=tta, batch_size=batch_size, cache=cache):
            if isinstance(p, str):
                out.append(Prediction(paths[i], [], p))
            else:
                vals, idx = p.topk(k)
                out.append(
                    Prediction(
                        paths[i],
                        [(self.classes[j], float(v)) for v, j in zip(vals, idx, strict=True)],
                    )
                )
        return out
