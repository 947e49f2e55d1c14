"""Small images decoded once into uint8 arrays, and the training augmentations run on batches.

Decoding a PNG and augmenting it with PIL costs more than a small network's step. Here each
image goes through :func:`~pixtell.data.images.load_image` (all its checks) once, its shorter
side is resized to ``size`` and the centre ``size`` x ``size`` square is kept as uint8. With
``size`` the largest side of the multi-scale range (``storage_size``), training then draws the
same things as :func:`~pixtell.data.transforms.build_train_transform` on batches: a shorter
side S (a downscale of the stored square), a random crop, a flip and a colour jitter in random
order. For square images (CIFAR, Fashion-MNIST, most small-image sets) this keeps the
augmentation semantics; the only difference is that S comes from the stored square rather than
from the original pixels (two resamplings instead of one). For other aspect ratios the crops
stay within the centre square. Evaluation resizes the square to ``img_size``, as the centre
crop of ``build_eval_transform`` would.

Where the arrays live (``--cache``): ``ram`` (a NumPy array), ``disk`` (a memory-mapped
``.npy`` under ``default_cache_root()/decoded``, named by the sha256 of the files' contents,
the size and the pixel limit, so an edited file makes a new one), ``none`` (decode every
time, the PIL path) or ``auto``: none for large inputs (``--augment rrc``, which needs the
whole image, or a stored side above ``AUTO_MAX_SIDE``), else ram when the arrays fit
``RAM_BUDGET_BYTES``, else disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from rich.progress import Progress
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional import _color

from pixtell.data.features import default_cache_root
from pixtell.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    StrPath,
    decode_min_size,
    file_sha256,
    load_image,
)
from pixtell.data.transforms import IMAGENET_MEAN, IMAGENET_STD

CacheMode = Literal["auto", "none", "ram", "disk"]
CACHE_MODES: tuple[str, ...] = ("auto", "none", "ram", "disk")
RAM_BUDGET_BYTES: int = 2 << 30  # auto: decoded sets up to 2 GiB stay in memory
AUTO_MAX_SIDE: int = 128  # auto: no cache for inputs stored larger than this (photos, rrc)
_FORMAT_VERSION = 1


def storage_size(
    img_size: int, augment: str = "multiscale", scale_jitter: tuple[float, float] = (1.0, 1.25)
) -> int:
    """The stored side: the largest S of the multi-scale range (``img_size`` for ``none``)."""
    if augment == "none":
        return img_size
    return max(img_size, round(img_size * max(scale_jitter)))


def resolve_cache_mode(
    mode: str,
    n_images: int,
    size: int,
    *,
    augment: str = "multiscale",
    budget_bytes: int = RAM_BUDGET_BYTES,
) -> Literal["none", "ram", "disk"]:
    """What ``--cache`` means for ``n_images`` stored at ``size`` (see the module docstring)."""
    if mode not in CACHE_MODES:
        raise ValueError(f"unknown --cache {mode!r}: use one of {', '.join(CACHE_MODES)}")
    if mode != "auto":
        if mode != "none" and augment not in ("multiscale", "none"):
            raise ValueError(
                f"--cache {mode} works with --augment multiscale or none (got {augment!r}: "
                "its crops need the whole image); use --cache none"
            )
        return mode  # type: ignore[return-value]
    if augment not in ("multiscale", "none") or size > AUTO_MAX_SIDE:
        return "none"
    return "ram" if n_images * size * size * 3 <= budget_bytes else "disk"


def decode_square(path: StrPath, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``load_image``, shorter side to ``size`` (antialiased), centre square → uint8 [S, S, 3]."""
    img = load_image(path, max_pixels=max_pixels, min_size=decode_min_size(size))
    img = TF.center_crop(TF.resize(img, size, antialias=True), [size, size])
    return np.asarray(img, dtype=np.uint8)


class DecodedImages:
    """uint8 [N, size, size, 3] of ``paths`` (in RAM or memory-mapped); ``ok[i]`` when usable.

    Unusable files are listed in ``problems`` as (path, reason) and their rows are zeros.
    """

    def __init__(
        self,
        paths: Sequence[StrPath],
        size: int,
        *,
        mode: Literal["ram", "disk"] = "ram",
        root: StrPath | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = False,
    ) -> None:
        if mode not in ("ram", "disk"):
            raise ValueError(f"DecodedImages mode must be ram or disk (got {mode!r})")
        self.paths = [Path(p) for p in paths]
        self.size, self.mode, self.max_pixels = size, mode, max_pixels
        self.problems: list[tuple[Path, str]] = []
        self.file: Path | None = None
        shape = (len(self.paths), size, size, 3)
        if mode == "ram":
            self.array: np.ndarray = np.zeros(shape, np.uint8)
            self.ok = self._fill(self.array, range(len(self.paths)), progress)
        else:
            self.array, self.ok = self._from_disk(shape, root, progress)

    def __len__(self) -> int:
        return len(self.paths)

    def tensor(self, i: int) -> torch.Tensor:
        """Image ``i`` as a uint8 [3, S, S] tensor (a copy: the array may be read-only)."""
        return torch.from_numpy(np.array(self.array[i])).permute(2, 0, 1)

    def _fill(self, out: np.ndarray, indices: Sequence[int], progress: bool) -> np.ndarray:
        ok = np.zeros(len(self.paths), bool)
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("Decoding images", total=len(indices))
            for i in indices:
                try:
                    out[i] = decode_square(self.paths[i], self.size, max_pixels=self.max_pixels)
                    ok[i] = True
                except ImageLoadError as err:
                    self.problems.append((self.paths[i], err.reason))
                bar.advance(task)
        return ok

    def _from_disk(
        self, shape: tuple[int, ...], root: StrPath | None, progress: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        hashes = []
        for p in self.paths:
            try:
                hashes.append(file_sha256(p))
            except OSError as exc:  # unreadable: decoding reports it with load_image's reason
                hashes.append(f"unreadable:{p}:{exc.errno}")
        key = hashlib.sha256(
            json.dumps([_FORMAT_VERSION, self.size, self.max_pixels, hashes]).encode()
        ).hexdigest()[:32]
        folder = Path(root).expanduser() if root is not None else default_cache_root() / "decoded"
        self.file = folder / f"{key}-{self.size}.npy"
        marker = self.file.with_suffix(".json")
        if marker.is_file():  # written last: its presence means the array is complete
            try:
                meta = json.loads(marker.read_text(encoding="utf-8"))
                array = np.load(self.file, mmap_mode="r")
                if array.shape == shape and len(meta["ok"]) == shape[0]:
                    self.problems = [(Path(p), r) for p, r in meta["problems"]]
                    return array, np.asarray(meta["ok"], bool)
            except (OSError, ValueError, KeyError, TypeError):
                pass  # damaged: decode again
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npy", dir=folder)
        os.close(fd)
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            ok = self._fill(array, range(shape[0]), progress)
            array.flush()
            del array
            os.replace(tmp, self.file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        meta = {"ok": ok.tolist(), "problems": [[str(p), r] for p, r in self.problems]}
        tmp_marker = marker.with_name(f".{marker.name}.tmp")
        tmp_marker.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp_marker, marker)
        return np.load(self.file, mmap_mode="r"), ok


class DecodedDataset(Dataset):
    """(uint8 image, label) from ``DecodedImages``; usable rows only.

    Under :class:`~pixtell.data.sampling.SeededDataset` (training) an item also carries a seed
    drawn from the sample's seeded RNG: :class:`BatchAugment` draws that sample's augmentation
    from it, so the batches of an epoch depend only on (seed, epoch, position).
    """

    def __init__(
        self, images: DecodedImages, labels: Sequence[int], *, with_seed: bool = False
    ) -> None:
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        self.images, self.with_seed = images, with_seed
        self.rows = [i for i in range(len(images)) if images.ok[i]]
        self.labels = [int(labels[i]) for i in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple:
        x = self.images.tensor(self.rows[i])
        if self.with_seed:
            return x, self.labels[i], int(torch.randint(0, 2**62, ()).item())
        return x, self.labels[i]


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # torchvision's adjust_* take one factor per call; these are per-sample ([B, 1, 1, 1])
    return (x * factor + other * (1 - factor)).clamp_(0, 1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    # torchvision's own HSV conversions (those of adjust_hue), with a per-sample shift
    h, s, v = _color._rgb_to_hsv(x).unbind(dim=-3)
    h = (h + shift[:, None, None]).remainder(1.0)
    return _color._hsv_to_rgb(torch.stack((h, s, v), dim=-3))


class BatchAugment:
    """``build_train_transform`` / ``build_eval_transform`` for uint8 [B, 3, S, S] batches.

    Each sample's draws (S, crop, flip, jitter factors and order) come from a generator seeded
    by its own seed, so they do not depend on the batch it lands in, nor on the device.
    """

    def __init__(
        self,
        img_size: int,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: str = "multiscale",
        scale_jitter: tuple[float, float] = (1.0, 1.25),
        hflip: bool = True,
        color_jitter: float = 0.1,
    ) -> None:
        if augment not in ("multiscale", "none"):
            raise ValueError(f"batched augmentation supports multiscale and none, not {augment!r}")
        self.img_size, self.augment = img_size, augment
        self.lo, self.hi = (max(img_size, round(img_size * s)) for s in scale_jitter)
        if augment == "none":
            self.lo = self.hi = img_size
        self.hflip, self.cj = hflip and augment != "none", color_jitter if augment != "none" else 0
        self.hue = min(self.cj / 4, 0.5)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @property
    def storage_size(self) -> int:
        """The side images must be stored at: the largest S drawn."""
        return self.hi

    def _draws(self, seeds: torch.Tensor) -> torch.Tensor:
        """[B, 12] uniforms in [0, 1): sample b's come from a generator seeded by ``seeds[b]``."""
        g = torch.Generator()
        return torch.stack([torch.rand(12, generator=g.manual_seed(s)) for s in seeds.tolist()])

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def train(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Augmented, normalized float [B, 3, img, img] from uint8 [B, 3, S, S]."""
        u = self._draws(seeds).to(x.device)
        n, dev, size = x.shape[0], x.device, self.img_size
        # v2's draws: S uniform in [lo, hi], crop offsets uniform, flip with p=0.5, each jitter
        # factor uniform in its range, the four jitter operations in a uniform random order
        scales = (self.lo + (u[:, 0] * (self.hi - self.lo + 1)).long()).clamp_(max=self.hi)
        room = (scales - size + 1).to(u.dtype)
        offsets = torch.stack([(u[:, 1] * room).long(), (u[:, 2] * room).long()], 1)
        span = torch.arange(size, device=dev)
        out = torch.empty((n, 3, size, size), dtype=torch.uint8, device=dev)
        for s in scales.unique().tolist():
            idx = (scales == s).nonzero().squeeze(1)
            part = x[idx] if s == x.shape[-1] else TF.resize(x[idx], [s, s], antialias=True)
            rows = (offsets[idx, 0, None] + span)[:, None, :, None]
            cols = (offsets[idx, 1, None] + span)[:, None, None, :]
            b = torch.arange(len(idx), device=dev)[:, None, None, None]
            c = torch.arange(3, device=dev)[None, :, None, None]
            out[idx] = part[b, c, rows, cols]
        if self.hflip:
            out = torch.where((u[:, 3] < 0.5)[:, None, None, None], out.flip(-1), out)
        img = out.float().div_(255)
        if self.cj > 0:
            lo = max(0.0, 1 - self.cj)
            factors = lo + (1 + self.cj - lo) * u[:, 4:7]  # brightness, contrast, saturation
            hue = self.hue * (2 * u[:, 7] - 1)
            order = u[:, 8:12].argsort(dim=1)  # v2.ColorJitter: 0 b, 1 c, 2 s, 3 hue
            for step in range(4):
                img = self._jitter_step(img, order[:, step], factors, hue)
        return self._normalize(img)

    @staticmethod
    def _jitter_step(
        img: torch.Tensor, op: torch.Tensor, factors: torch.Tensor, hue: torch.Tensor
    ) -> torch.Tensor:
        """Every sample does one operation: brightness, contrast and saturation are each a
        blend ``f * x + (1 - f) * other`` (as torchvision's adjust_*), so one blend serves the
        three, with ``f = 1`` for the samples whose turn is hue."""
        gray = TF.rgb_to_grayscale(img)
        other = torch.where(
            (op == 1)[:, None, None, None],
            gray.mean(dim=(-3, -2, -1), keepdim=True).expand_as(gray),
            torch.where((op == 2)[:, None, None, None], gray, torch.zeros_like(gray)),
        )
        f = factors.gather(1, op.clamp(max=2)[:, None]).squeeze(1)
        f = torch.where(op == 3, torch.ones_like(f), f).view(-1, 1, 1, 1)
        img = _blend(img, other, f)
        turn = (op == 3).nonzero().squeeze(1)
        if len(turn):
            img[turn] = _hue(img[turn], hue[turn])
        return img

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized float [B, 3, img, img]: the stored square resized to ``img_size``."""
        if x.shape[-1] != self.img_size:
            x = TF.resize(x, [self.img_size, self.img_size], antialias=True)
        return self._normalize(x.float().div_(255))


__all__ = [
    "AUTO_MAX_SIDE",
    "CACHE_MODES",
    "RAM_BUDGET_BYTES",
    "BatchAugment",
    "CacheMode",
    "DecodedDataset",
    "DecodedImages",
    "decode_square",
    "resolve_cache_mode",
    "storage_size",
]
