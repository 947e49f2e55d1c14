"""``detect.train``: the detection recipe for the shared run flow (engine.train)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from rich.console import Console
from torch.utils.data import DataLoader

from pixtell import engine
from pixtell.config import DetectTrainConfig
from pixtell.data.sampling import seeded_loader
from pixtell.detect.data import (
    DetDataset,
    DetectionDataset,
    build_transforms,
    collate,
    load_dataset,
    read_split,
    split_dataset,
    write_split,
)
from pixtell.detect.module import DetectionModule
from pixtell.models import get_spec
from pixtell.models.detection import DETECTORS
from pixtell.runs import Run

SPLIT_FILE = "split.json"
_PROBLEMS_SHOWN = 20
console = Console(highlight=False, soft_wrap=True)


@dataclass
class DetectData:
    """A loaded dataset and its image indices per split (``train`` / ``val`` / ``test``)."""

    ds: DetDataset
    splits: dict[str, list[int]]

    def images(self, split: str) -> list:
        return [self.ds.images[i] for i in self.splits.get(split, [])]


def default_workers() -> int:
    """CPUs - 1, at most 4 (one core stays with the training loop)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def train_sizes(img_size: int, multiscale: float) -> list[int]:
    """Five shorter sides evenly spread over ``img_size`` × [1 − m, 1 + m] (none when m is 0)."""
    if not multiscale:
        return []
    return sorted({round(img_size * (1 - multiscale + multiscale * i / 2)) for i in range(5)})


def arch_kwargs(model: str, img_size: int | None, multiscale: float = 0.0) -> dict[str, Any]:
    """Builder arguments that make detector ``model`` resize its input to ``img_size``.

    torchvision detectors resize inside the model (shorter side ``min_size``, longer side at
    most ``max_size``); predictions come back in the original image's pixels either way.
    With ``multiscale`` the training batches take a random shorter side from
    :func:`train_sizes` (torchvision's transform draws one per batch); evaluation stays at
    ``img_size``.
    """
    spec = get_spec(model, "detect")  # an unknown name lists the known ones
    if img_size is None and not multiscale:
        return {}
    if DETECTORS.get(model, ("",))[0] == "ssd":
        raise ValueError(f"{model} works at a fixed 320 px; leave --img-size and --multiscale out")
    size = img_size or spec.input_size
    sizes = train_sizes(size, multiscale)
    if model == "tiny_fcos":
        return {"img_size": size, **({"train_sizes": sizes} if sizes else {})}
    # keep torchvision's 800:1333 ratio between the shorter and the longest allowed side
    longest = max([size, *sizes])
    min_size: int | tuple[int, ...] = (*sizes, size) if sizes else size
    return {"min_size": min_size, "max_size": max(longest, round(longest * 1333 / 800))}


class DetectDataModule(L.LightningDataModule):
    """Train / val / test loaders of ``(images, targets)`` lists over an already-made split."""

    def __init__(
        self,
        data: DetectData,
        *,
        batch_size: int = 8,
        num_workers: int | None = None,
        hflip: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        # the detector resizes inside the model, so the data pipeline keeps the original size
        self.train_tf = build_transforms(True, img_size=None, hflip=hflip)
        self.eval_tf = build_transforms(False, img_size=None)
        self.seed = seed
        self.start_epoch = 0  # set by the engine when a run is resumed

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(
            DetectionDataset(self.data.images(split), self.eval_tf),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        ds = DetectionDataset(self.data.images("train"), self.train_tf)
        # order and flips from (seed, epoch, position): exact on resume, any number of workers
        return seeded_loader(
            ds,
            seed=self.seed,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            start_epoch=self.start_epoch,
            collate_fn=collate,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


class DetectRecipe(engine.Recipe):
    """A VOC / COCO / YOLO dataset → a detector scored by COCO mAP on validation."""

    task = "detect"
    config_cls = DetectTrainConfig
    table_keys = ("train_loss", "val_map", "val_map_50")

    # -- data ------------------------------------------------------------------------------
    def prepare(self, cfg: DetectTrainConfig) -> DetectData:
        arch_kwargs(
            cfg.model, cfg.img_size, cfg.multiscale
        )  # a bad --img-size fails before the data is read
        ds = load_dataset(
            cfg.data,
            format=None if cfg.format == "auto" else cfg.format,
            drop_empty=cfg.drop_empty,
        )
        for path, reason in ds.problems[:_PROBLEMS_SHOWN]:
            console.print(f"[yellow]problem[/] {path}: {reason}")
        if len(ds.problems) > _PROBLEMS_SHOWN:
            console.print(
                f"[yellow]... and {len(ds.problems) - _PROBLEMS_SHOWN} more problems[/] "
                "(all listed in the run's split.json; `pixtell detect analyze` shows them too)"
            )
        if not ds.class_names:
            raise ValueError(f"{cfg.data} has no object classes (no boxes were read)")
        fractions = (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
        splits = split_dataset(ds, fractions, seed=cfg.seed)
        if not splits["train"] or not splits["val"]:
            raise ValueError(
                f"{cfg.data}: too few images to make train and validation splits "
                f"({len(ds.images)} readable images; train {len(splits['train'])}, "
                f"val {len(splits['val'])})"
            )
        return DetectData(ds, splits)

    def save_data(self, run_dir: Path, data: DetectData) -> None:
        write_split(run_dir / SPLIT_FILE, data.ds, data.splits)

    def load_data(self, run_dir: Path, cfg: DetectTrainConfig) -> DetectData:
        ds, splits = read_split(run_dir / SPLIT_FILE)
        return DetectData(ds, splits)

    def describe(self, cfg: DetectTrainConfig, data: DetectData) -> None:
        names = data.ds.class_names
        sizes = ", ".join(f"{s} {len(data.splits.get(s, []))}" for s in ("train", "val", "test"))
        console.print(
            f"[bold]pixtell[/] detect: {cfg.model} ({cfg.train_mode}) on {cfg.data} "
            f"({data.ds.format}, {len(names)} classes; images: {sizes})"
        )
        counts = {
            s: np.bincount(
                np.concatenate([img.labels for img in data.images(s)] or [np.zeros(0, int)]),
                minlength=len(names),
            )
            for s in ("train", "val", "test")
        }
        width = max(len(n) for n in names)
        for i, name in enumerate(names):
            row = "  ".join(f"{s} {counts[s][i]:>5}" for s in ("train", "val", "test"))
            console.print(f"  {name:<{width}}  {row}  boxes")
        missing = [n for i, n in enumerate(names) if counts["val"][i] == 0]
        if missing:
            console.print(
                f"[yellow]warning[/]: no validation boxes for {', '.join(missing)} "
                "(these classes do not count in val_map)"
            )
        if cfg.train_mode != "full" and not self.starts_trained(cfg):
            console.print(
                f"[yellow]warning[/]: --train-mode {cfg.train_mode} without pretrained weights "
                "freezes or slows a random backbone; add --pretrained or --weights PATH"
            )

    # -- model -----------------------------------------------------------------------------
    def build_module(self, cfg: DetectTrainConfig, data: DetectData) -> DetectionModule:
        hparams = self.shared_hparams(DetectionModule, cfg, exclude={"pretrained", "weights"})
        return DetectionModule(
            cfg.model,
            len(data.ds.class_names),
            class_names=data.ds.class_names,
            pretrained=self.wants_pretrained(cfg) and not cfg.weights,
            weights=str(cfg.weights) if cfg.weights else None,
            arch_kwargs=arch_kwargs(cfg.model, cfg.img_size, cfg.multiscale),
            **hparams,
        )

    def build_datamodule(self, cfg: DetectTrainConfig, data: DetectData) -> DetectDataModule:
        return DetectDataModule(
            data,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            hflip=cfg.hflip,
            seed=cfg.seed,
        )

    def monitor(self, cfg: DetectTrainConfig) -> tuple[str, str]:
        return cfg.monitor, "max"

    def model_meta(self, cfg: DetectTrainConfig, data: DetectData) -> dict[str, Any]:
        spec = get_spec(cfg.model, "detect")
        return {
            "task": "detect",
            "arch": cfg.model,
            "num_classes": len(data.ds.class_names),
            "class_names": list(data.ds.class_names),
            "arch_kwargs": arch_kwargs(cfg.model, cfg.img_size, cfg.multiscale),
            "img_size": cfg.img_size or spec.input_size,
        }

    def steps_per_epoch(self, cfg: DetectTrainConfig, data: DetectData) -> int:
        return max(1, len(data.splits["train"]) // cfg.batch_size)


def train(data: str | Path | None = None, **options: Any) -> Run:
    """Train a detector on a VOC / COCO / YOLO dataset; returns the finished ``Run``.

    Settings: defaults < ``config_file`` < ``overrides`` (see ``DetectTrainConfig``).
    ``resume`` continues a run from its ``last.ckpt``: only ``epochs``, ``patience`` and how
    it runs (devices, workers, loggers, progress) may change. The best checkpoint is the one
    with the highest validation mAP (``--monitor``).
    """
    return engine.train(DetectRecipe(), data, **options)
