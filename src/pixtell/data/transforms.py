"""Image transforms for training and evaluation (torchvision.transforms.v2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomResizeShorter(torch.nn.Module):
    """Resize the shorter side to a random S in [min_size, max_size] (VGG's scale jitter)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def forward(self, img):  # type: ignore[no-untyped-def]
        # torch's RNG (not Python's): data.sampling seeds it per sample
        size = int(torch.randint(self.min_size, self.max_size + 1, ()).item())
        return v2.functional.resize(img, size, antialias=True)


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[torch.nn.Module]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def build_train_transform(
    img_size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: str = "multiscale",
    scale_jitter: tuple[float, float] = (1.125, 1.375),
    crop_scale: tuple[float, float] = (0.35, 1.0),
    hflip: bool = True,
    color_jitter: float = 0.2,
) -> v2.Compose:
    """Training transform.

    ``augment="multiscale"``: resize the shorter side to S, S drawn from
    ``img_size * scale_jitter`` (e.g. S in [36, 44] for 32), then random-crop
    ``img_size`` (VGG's multi-scale training). ``"rrc"``: random-resized crop.
    ``"none"``: resize + center crop only.
    """
    if augment == "multiscale":
        lo, hi = (max(img_size, round(img_size * s)) for s in scale_jitter)
        ops: list[torch.nn.Module] = [RandomResizeShorter(lo, hi), v2.RandomCrop(img_size)]
    elif augment == "rrc":
        ops = [v2.RandomResizedCrop(img_size, scale=crop_scale, antialias=True)]
    elif augment == "none":
        ops = [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]
    else:
        raise ValueError(f"unknown augment {augment!r}: use multiscale, rrc or none")
    if augment != "none":
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
        if color_jitter > 0:
            cj = color_jitter
            ops.append(
                v2.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=min(cj / 4, 0.5))
            )
    return v2.Compose(ops + _to_tensor(mean, std))


def build_eval_transform(
    img_size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize_ratio: float = 1.0,
) -> v2.Compose:
    """Evaluation: shorter side to ``img_size * resize_ratio``, center crop ``img_size``."""
    return v2.Compose(
        [v2.Resize(round(img_size * resize_ratio), antialias=True), v2.CenterCrop(img_size)]
        + _to_tensor(mean, std)
    )


def build_full_image_transform(
    size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Shorter side to ``size``, no crop: the whole image, for VGG-style dense evaluation."""
    return v2.Compose([v2.Resize(size, antialias=True)] + _to_tensor(mean, std))
