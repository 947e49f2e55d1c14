"""Datasets and the LightningDataModule for classification."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from pixtell.data.decoded import BatchAugment, DecodedDataset, DecodedImages
from pixtell.data.folders import Sample
from pixtell.data.images import DEFAULT_MAX_PIXELS, load_image
from pixtell.data.sampling import seeded_loader


class ImageListDataset(Dataset):
    """(image, label) pairs from a list of samples; images go through ``load_image``."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_size: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.max_pixels = max_pixels
        self.min_size = min_size  # load_image's scaled JPEG decoding

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s = self.samples[i]
        img = load_image(s.path, max_pixels=self.max_pixels, min_size=self.min_size)
        return (self.transform(img) if self.transform else img), s.label


class ClipFeatureDataset(Dataset):
    """Adds each sample's cached CLIP feature row to the image: ``((image, clip), label, ...)``.

    Without a ``base`` (models that look only at CLIP features) no image is decoded: the
    image is an empty tensor.
    """

    def __init__(self, base: Dataset | None, labels: Sequence[int], features: Any) -> None:
        self.base, self.labels = base, list(labels)
        self.features = torch.as_tensor(features, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple:
        if self.base is None:
            return (torch.zeros(0), self.features[i]), self.labels[i]
        x, *rest = self.base[i]
        return ((x, self.features[i]), *rest)


class AugmentingCollate:
    """Collate cached uint8 samples and run the batched training augmentation there, i.e. in
    the DataLoader workers: training on the CPU, it then runs on a core the step does not use
    (on a GPU it runs on the device instead, in ``on_after_batch_transfer``)."""

    def __init__(self, augment: BatchAugment) -> None:
        self.augment = augment

    def __call__(self, items: list) -> list:
        x, y, seeds = default_collate(items)
        if isinstance(x, list | tuple):  # (image, CLIP features)
            return [(self.augment.train(x[0], seeds), x[1]), y]
        return [self.augment.train(x, seeds), y]


def default_workers() -> int:
    """CPUs - 1, at most 4 (one core stays with the training loop)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def class_weights(samples: Sequence[Sample], num_classes: int) -> list[float]:
    """Inverse-frequency weights ``N / (C * n_c)``, as scikit-learn's ``balanced``."""
    counts = Counter(s.label for s in samples)
    n = len(samples)
    return [n / (num_classes * counts[c]) if counts[c] else 0.0 for c in range(num_classes)]


class ClassifyDataModule(L.LightningDataModule):
    """Train / val / test loaders over an already-made split."""

    def __init__(
        self,
        splits: dict[str, list[Sample]],
        num_classes: int,
        train_transform: Callable,
        eval_transform: Callable,
        *,
        batch_size: int = 64,
        num_workers: int | None = None,
        balanced_sampler: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        seed: int = 0,
        min_size: int | None = None,
        cache: str = "none",
        batch_augment: BatchAugment | None = None,
        cache_root: str | None = None,
        clip_features: dict[str, Any] | None = None,
        use_images: bool = True,
    ) -> None:
        super().__init__()
        self.splits, self.num_classes = splits, num_classes
        self.train_tf, self.eval_tf = train_transform, eval_transform
        self.batch_size = batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.balanced_sampler, self.max_pixels, self.seed = balanced_sampler, max_pixels, seed
        self.start_epoch = 0  # set by the engine when a run is resumed
        # hybrid / clip_linear: CLIP feature rows per split, aligned with its samples
        self.clip_features, self.use_images = clip_features, use_images
        self.min_size = min_size
        # --cache ram|disk: decoded uint8 squares, augmented per batch on the training device
        self.cache, self.batch_augment, self.cache_root = cache, batch_augment, cache_root
        if cache != "none" and batch_augment is None:
            raise ValueError(f"cache={cache!r} needs a batch_augment")
        self._decoded: dict[str, DecodedImages] = {}
        self._workers_given = num_workers is not None

    def decoded(self, split: str) -> DecodedImages:
        """The decoded images of ``split`` (made on first use; skipped files reported)."""
        if split not in self._decoded:
            assert self.batch_augment is not None
            images = DecodedImages(
                [s.path for s in self.splits[split]],
                self.batch_augment.storage_size,
                mode=self.cache,  # type: ignore[arg-type]
                root=self.cache_root,
                max_pixels=self.max_pixels,
            )
            for path, reason in images.problems:
                print(f"skipped {path}: {reason}")
            self._decoded[split] = images
        return self._decoded[split]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch[0], list | tuple):  # (image, CLIP features): the image part
            (x, clip), *rest = batch
            x, *rest = self.on_after_batch_transfer([x, *rest], dataloader_idx)
            return [(x, clip), *rest]
        # cached batches arrive as uint8 on the training device: augment / resize them there
        if self.batch_augment is None or batch[0].dtype != torch.uint8:
            return batch
        if len(batch) == 3:
            x, y, seeds = batch
            return self.batch_augment.train(x, seeds), y
        x, y = batch
        return self.batch_augment.eval(x), y

    def _on_cpu(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is None or trainer.strategy.root_device.type == "cpu"

    def _workers(self) -> int:
        # Cached images need no decoding: on a GPU the augmentation runs on the device and
        # workers would only copy; on the CPU they run the augmentation beside the step.
        if self.cache != "none" and not self._workers_given and not self._on_cpu():
            return 0
        return self.num_workers

    def _loader(self, split: str, train: bool) -> DataLoader:
        workers = self._workers()
        if self.cache != "none":
            labels = [s.label for s in self.splits[split]]
            ds: Dataset = DecodedDataset(self.decoded(split), labels, with_seed=train)
        else:
            ds = ImageListDataset(
                self.splits[split],
                self.train_tf if train else self.eval_tf,
                self.max_pixels,
                self.min_size,
            )
        if self.clip_features is not None:
            labels = [s.label for s in self.splits[split]]
            base = ds if self.use_images else None
            ds = ClipFeatureDataset(base, labels, self.clip_features[split])
        if not train:
            return DataLoader(
                ds, batch_size=self.batch_size, num_workers=workers, persistent_workers=workers > 0
            )
        weights = None
        if self.balanced_sampler:
            w = class_weights(self.splits[split], self.num_classes)
            labels = getattr(ds, "labels", None) or [s.label for s in self.splits[split]]
            weights = [w[label] for label in labels]
        # order and augmentations from (seed, epoch, position): exact on resume, any workers
        in_workers = self.cache != "none" and workers > 0 and self._on_cpu()
        assert not in_workers or self.batch_augment is not None
        loader = seeded_loader(
            ds,
            seed=self.seed,
            batch_size=self.batch_size,
            num_workers=workers,
            start_epoch=self.start_epoch,
            weights=weights,
            collate_fn=AugmentingCollate(self.batch_augment) if in_workers else None,
        )
        # Each new iterator draws a base seed from `generator` (the global RNG when None). With
        # num_workers=0 that happens every epoch after EpochSeed has seeded the global RNG in an
        # uninterrupted run but before it in a resumed one: a private generator keeps the
        # model's random streams (dropout) identical. Samples are seeded per position anyway.
        loader.generator = torch.Generator()
        return loader

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
