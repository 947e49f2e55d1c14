"""``classify.train``: the classification recipe for the shared run flow (engine.train)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from pixtell import engine
from pixtell.classify.data import ClassifyDataModule, class_weights
from pixtell.classify.module import ClassifierModule
from pixtell.config import ClassifyTrainConfig
from pixtell.data.decoded import BatchAugment, resolve_cache_mode, storage_size
from pixtell.data.folders import ImageFolderScan, read_split, scan_image_folder, write_split
from pixtell.data.images import decode_min_size
from pixtell.data.transforms import build_eval_transform, build_train_transform
from pixtell.models import get_spec
from pixtell.models.clip import ClipEncoder, load_clip, uses_clip, uses_image
from pixtell.runs import Run

SPLIT_FILE = "split.json"
console = Console(highlight=False, soft_wrap=True)


class ClassifyRecipe(engine.Recipe):
    """Folders of class folders → a classifier (optionally head first, then everything)."""

    task = "classify"
    config_cls = ClassifyTrainConfig
    table_keys = ("train_loss", "val_loss", "val_acc")

    # -- data ------------------------------------------------------------------------------
    def prepare(self, cfg: ClassifyTrainConfig) -> ImageFolderScan:
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
        conflicts = {tuple(g) for g in getattr(scan, "conflicts", [])}
        for group in (g for g in scan.duplicates if tuple(g) not in conflicts):
            console.print(
                "[yellow]duplicate images[/] (kept in one split): " + ", ".join(map(str, group))
            )
        for group in getattr(scan, "conflicts", []):
            console.print(
                "[yellow]label conflict[/] (the same image in several classes): "
                + ", ".join(map(str, group))
            )
        if len(scan.classes) < 2:
            found = f"only {scan.classes[0]!r}" if scan.classes else "none"
            raise ValueError(
                f"{cfg.data} needs at least two class folders (DATA/<class>/<image>); found {found}"
            )
        if not scan.splits["train"] or not scan.splits["val"]:
            raise ValueError(
                f"{cfg.data}: too few images to make train and validation splits "
                f"({sum(len(v) for v in scan.splits.values())} readable images)"
            )
        self._clip_encoder(cfg)  # an unavailable --clip fails here, before the run directory
        return scan

    def save_data(self, run_dir: Path, data: ImageFolderScan) -> None:
        write_split(run_dir / SPLIT_FILE, data)

    def load_data(self, run_dir: Path, cfg: ClassifyTrainConfig) -> ImageFolderScan:
        return read_split(run_dir / SPLIT_FILE)

    # -- CLIP features (--model hybrid / clip_linear) ---------------------------------------
    def _clip_encoder(self, cfg: ClassifyTrainConfig) -> ClipEncoder | None:
        """The frozen CLIP of --clip (loaded once), or None when the model takes no CLIP."""
        if not uses_clip(cfg.model, cfg.mode):
            return None
        if getattr(self, "_clip", None) is None:
            self._clip = load_clip(cfg.clip, text=False)
        return self._clip

    def _arch_kwargs(self, cfg: ClassifyTrainConfig) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"mode": cfg.mode} if cfg.model == "hybrid" else {}
        encoder = self._clip_encoder(cfg)
        if encoder is not None:
            kwargs["clip_dim"] = encoder.dim
        return kwargs

    def _clip_features(
        self, cfg: ClassifyTrainConfig, data: ImageFolderScan
    ) -> dict[str, Any] | None:
        """CLIP features of every split, computed once (cached on disk by content)."""
        encoder = self._clip_encoder(cfg)
        if encoder is None:
            return None
        names = list(data.splits)
        paths = [s.path for name in names for s in data.splits[name]]
        feats, problems = encoder.features(paths, progress=cfg.progress)
        for path, reason in problems:
            console.print(f"[yellow]no CLIP features[/] for {path}: {reason} (zeros used)")
        feats[~np.isfinite(feats).all(1)] = 0.0
        bounds = np.cumsum([0] + [len(data.splits[name]) for name in names])
        return {name: feats[bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}

    def _clip_meta(self, cfg: ClassifyTrainConfig) -> dict[str, Any]:
        """What ``model.json`` needs to rebuild the model and find its CLIP features."""
        if cfg.model not in ("hybrid", "clip_linear"):
            return {}
        meta: dict[str, Any] = {"arch_kwargs": self._arch_kwargs(cfg)}
        encoder = self._clip_encoder(cfg)
        if encoder is not None:
            meta.update(clip=encoder.name, clip_key=encoder.key)
        return meta

    def describe(self, cfg: ClassifyTrainConfig, data: ImageFolderScan) -> None:
        counts = {part: Counter(s.label for s in data.splits[part]) for part in data.splits}
        sizes = ", ".join(f"{part} {len(data.splits[part])}" for part in ("train", "val", "test"))
        console.print(
            f"[bold]pixtell[/] classify: {cfg.model} on {cfg.data} "
            f"({len(data.classes)} classes; {sizes})"
        )
        width = max(len(c) for c in data.classes)
        for i, name in enumerate(data.classes):
            row = "  ".join(f"{part} {counts[part][i]:>5}" for part in ("train", "val", "test"))
            console.print(f"  {name:<{width}}  {row}")
        small = [
            name
            for i, name in enumerate(data.classes)
            if (cfg.val_fraction and not counts["val"][i])
            or (cfg.test_fraction and not counts["test"][i])
        ]
        if small and not data.presplit:
            console.print(
                f"[yellow]warning[/]: too few images to reach validation/test: "
                f"{', '.join(small)} (these classes are not scored there)"
            )
        spec = get_spec(cfg.model, "classify")
        img_size = cfg.img_size or spec.input_size
        if img_size < spec.input_size / 3:
            console.print(
                f"[yellow]warning[/]: --img-size {img_size} is far below {cfg.model}'s native "
                f"{spec.input_size}; pretrained features lose most of their value (consider "
                "tinyvgg_* for small images)"
            )
        if cfg.freeze_backbone and not self.starts_trained(cfg):
            console.print(
                "[yellow]warning[/]: --freeze-backbone without pretrained weights trains the "
                "head on random features; add --pretrained or --weights PATH"
            )

    # -- model -----------------------------------------------------------------------------
    def build_module(self, cfg: ClassifyTrainConfig, data: ImageFolderScan) -> ClassifierModule:
        weights = (
            class_weights(data.splits["train"], len(data.classes))
            if cfg.balance == "weights"
            else None
        )
        hparams = self.shared_hparams(ClassifierModule, cfg, exclude={"pretrained", "weights"})
        return ClassifierModule(
            cfg.model,
            len(data.classes),
            pretrained=self.wants_pretrained(cfg),
            weights=str(cfg.weights) if cfg.weights else None,
            class_weights=weights,
            arch_kwargs=self._arch_kwargs(cfg),
            **hparams,
        )

    def build_datamodule(
        self, cfg: ClassifyTrainConfig, data: ImageFolderScan
    ) -> ClassifyDataModule:
        spec = get_spec(cfg.model, "classify")
        img_size = cfg.img_size or spec.input_size
        augment = cfg.augment
        if augment == "auto":
            augment = "multiscale" if img_size < 96 else "rrc"
        jitter = (cfg.scale_min, max(cfg.scale_min, cfg.scale_max))
        # the PIL transform and its batched twin (--cache) take the same settings
        aug: dict[str, Any] = dict(
            mean=spec.mean,
            std=spec.std,
            augment=augment,
            scale_jitter=jitter,
            hflip=cfg.hflip,
            color_jitter=cfg.color_jitter,
        )
        train_tf = build_train_transform(img_size, **aug)
        n_images = sum(len(v) for v in data.splits.values())
        size = storage_size(img_size, augment, jitter)
        cache = resolve_cache_mode(cfg.cache, n_images, size, augment=augment)
        batch_augment = BatchAugment(img_size, **aug) if cache != "none" else None
        return ClassifyDataModule(
            data.splits,
            len(data.classes),
            train_tf,
            build_eval_transform(img_size, mean=spec.mean, std=spec.std),
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            balanced_sampler=cfg.balance == "sampler",
            max_pixels=cfg.max_pixels,
            seed=cfg.seed,
            min_size=decode_min_size(img_size),
            cache=cache,
            batch_augment=batch_augment,
            clip_features=self._clip_features(cfg, data),
            use_images=uses_image(cfg.model, cfg.mode),
        )

    def monitor(self, cfg: ClassifyTrainConfig) -> tuple[str, str]:
        return cfg.monitor, "min" if cfg.monitor == "val_loss" else "max"

    def model_meta(self, cfg: ClassifyTrainConfig, data: ImageFolderScan) -> dict[str, Any]:
        spec = get_spec(cfg.model, "classify")
        return {
            "task": "classify",
            "arch": cfg.model,
            "num_classes": len(data.classes),
            "class_names": data.classes,
            "img_size": cfg.img_size or spec.input_size,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "max_pixels": cfg.max_pixels,
            **self._clip_meta(cfg),
        }

    def steps_per_epoch(self, cfg: ClassifyTrainConfig, data: ImageFolderScan) -> int:
        return max(1, len(data.splits["train"]) // cfg.batch_size)

    # -- stages ----------------------------------------------------------------------------
    def _two_stage(self, cfg: ClassifyTrainConfig) -> bool:
        return cfg.freeze_backbone and cfg.fine_tune_epochs > 0

    def total_epochs(self, cfg: ClassifyTrainConfig) -> int:
        return cfg.epochs + cfg.fine_tune_epochs

    def stage_boundary(self, cfg: ClassifyTrainConfig) -> int:
        return cfg.epochs if self._two_stage(cfg) else 0

    def has_frozen_stage(self, cfg: ClassifyTrainConfig) -> bool:
        return cfg.freeze_backbone

    def stage_name(self, cfg: ClassifyTrainConfig, epoch: int) -> str | None:
        if not cfg.freeze_backbone:
            return None
        return "head only" if epoch < cfg.epochs else "fine-tune all"

    def extend_epochs(self, recorded: ClassifyTrainConfig, epochs: int) -> dict[str, Any]:
        # A finished two-stage run that is asked for more epochs trains its last stage longer:
        # the stage boundary (and the head-only stage) stay where they were.
        if recorded.fine_tune_epochs > 0:
            extra = epochs - recorded.epochs
            return {
                "epochs": recorded.epochs,
                "fine_tune_epochs": recorded.fine_tune_epochs + extra,
            }
        return {"epochs": epochs}


def train(data: str | Path | None = None, **options: Any) -> Run:
    """Train a classifier on ``DATA/<class>/<image>``; returns the finished ``Run``.

    Settings: defaults < ``config_file`` < ``overrides`` (see ``ClassifyTrainConfig``).
    ``resume`` continues a run from its ``last.ckpt``: only ``epochs``, ``patience`` and how
    it runs (devices, workers, loggers, progress) may change. ``callbacks`` are extra
    Lightning callbacks (e.g. for notebooks and tests).
    """
    return engine.train(ClassifyRecipe(), data, **options)
