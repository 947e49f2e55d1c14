"""Safe image loading: every unusable file becomes an ImageLoadError with a one-sentence fix."""

from __future__ import annotations

import hashlib
import re
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS: int = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
# Only plain raster decoders: never hand user files to e.g. EPS (Ghostscript). JPEG covers MPO.
_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
# What Pillow raises for bad data (decoders and plugin parsers), not programming errors.
_PIL_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_16BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})

StrPath = str | PathLike[str]

# Scaled JPEG decoding keeps the shorter side at least this many times the side the image is
# resized to next, so that resize always downsamples from >= 2x (the same kind of input in
# training, evaluation, prediction, sorting and serving) whatever the photo's resolution.
DRAFT_FACTOR: int = 2


def decode_min_size(input_size: int) -> int:
    """The ``min_size`` for ``load_image`` when the image is next resized to ``input_size``."""
    return DRAFT_FACTOR * int(input_size)


class ImageLoadError(ValueError):
    """Raised for a file that cannot be used as an image; has ``.path`` and ``.reason``."""

    def __init__(self, path: StrPath, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # type: ignore[no-untyped-def]  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason))


def is_image_file(path: StrPath) -> bool:
    """True when the file extension is a supported image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def file_sha256(path: StrPath, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def check_image(path: StrPath, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """The reason ``load_image`` would fail for ``path``, or None when it would succeed."""
    try:
        load_image(path, max_pixels=max_pixels)
    except ImageLoadError as err:
        return err.reason
    return None


def load_image(
    path: StrPath, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int | None = None
) -> Image.Image:
    """Fully decode ``path`` into an RGB image (EXIF orientation applied, first frame only).

    With ``min_size``, a JPEG at least twice that size on its shorter side is decoded at
    1/2, 1/4 or 1/8 scale (Pillow's ``Image.draft``: the DCT is scaled, so most of the
    decoding work is skipped) while its shorter side stays at least ``min_size``. Other
    formats, and smaller JPEGs, are decoded at full size. ``max_pixels`` applies to the
    stored size. Raises ImageLoadError for a missing, empty, unreadable, corrupt, truncated
    or too large file.
    """
    if min_size is not None and min_size < 1:
        raise ValueError(f"min_size must be at least 1 (got {min_size})")
    path = Path(path)
    _check_file(path)
    try:
        img = _decode(path, max_pixels, min_size)
    except ImageLoadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            path,
            "not an image Pillow can read (cannot identify image file); "
            "remove it or convert it to PNG/JPEG",
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(path, _too_many_pixels(_pixels_in(exc), max_pixels)) from exc
    except OSError as exc:
        if exc.errno is None:  # decoder errors carry no errno; file-system errors do
            raise ImageLoadError(path, _corrupt(exc)) from exc
        raise ImageLoadError(path, _unreadable(exc)) from exc
    except _PIL_ERRORS as exc:
        raise ImageLoadError(path, _corrupt(exc)) from exc
    return _to_rgb(img, path)


def _check_file(path: Path) -> None:
    try:
        if path.is_dir():
            raise ImageLoadError(path, "is a folder, not an image file; pass an image file")
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise ImageLoadError(path, "file not found; check the path") from exc
    except OSError as exc:
        raise ImageLoadError(path, _unreadable(exc)) from exc
    if size == 0:
        raise ImageLoadError(
            path, "file is empty (0 bytes); remove it or replace it with a valid image"
        )


def _decode(path: Path, max_pixels: int, min_size: int | None = None) -> Image.Image:
    """Open, check the size before decoding, fully decode, and orient (a new, closed-file image)."""
    with _strict_pillow():
        try:
            return _open_checked(path, max_pixels, min_size)
        except Image.DecompressionBombError:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is None or max_pixels <= 2 * limit:
                raise
    # The caller allows more pixels than Pillow's hard limit: lift Pillow's limit for this file.
    with _LOCK, _strict_pillow():
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return _open_checked(path, max_pixels, min_size)
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _open_checked(path: Path, max_pixels: int, min_size: int | None = None) -> Image.Image:
    with Image.open(path, formats=_FORMATS) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageLoadError(path, _too_many_pixels(width * height, max_pixels))
        if min_size is not None and im.format == "JPEG" and min(width, height) >= 2 * min_size:
            # A square request keeps the check independent of EXIF orientation (draft works
            # on the stored pixels): Pillow picks the largest scale 1/s with
            # ceil(side / s) >= min_size for both sides, so the shorter side stays >= min_size.
            im.draft("RGB", (min_size, min_size))
        im.load()
        return _oriented(im)


def _oriented(im: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except _PIL_ERRORS:  # a broken EXIF block should not make good pixels unusable
        out = None
    return out if out is not None and out is not im else im.copy()


_LOCK = threading.RLock()
_STRICT_USERS = 0
_SAVED_TRUNCATED = False


@contextmanager
def _strict_pillow() -> Iterator[None]:
    """Ignore Pillow's bomb warning (we check ourselves) and force truncated data to raise.

    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is a process-wide flag that other code may set; it is
    forced off while any load here runs and restored when the last one ends.
    """
    global _STRICT_USERS, _SAVED_TRUNCATED
    with _LOCK:
        if _STRICT_USERS == 0:
            _SAVED_TRUNCATED = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _STRICT_USERS += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        with _LOCK:
            _STRICT_USERS -= 1
            if _STRICT_USERS == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _SAVED_TRUNCATED


def _to_rgb(im: Image.Image, path: Path) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha and transparent colours put on white)."""
    mode = im.mode
    transparency = im.info.get("transparency")
    if mode == "RGB" and transparency is None:
        return im
    if mode in _16BIT_MODES or mode in ("I", "F"):
        values = np.asarray(im)
        gray = _gray_to_uint8(values, mode)
        if isinstance(transparency, int) and not isinstance(transparency, bool):
            gray[values == transparency] = 255  # a PNG tRNS grey value: that colour is see-through
        return Image.fromarray(gray).convert("RGB")
    try:
        if mode in _ALPHA_MODES or transparency is not None:
            try:
                rgba = im.convert("RGBA")  # Pillow turns a tRNS colour or index into alpha
            except (TypeError, ValueError):  # a malformed transparency value: ignore it
                return im.convert("RGB")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")
    except ValueError as exc:  # Pillow has no conversion for this mode (e.g. LAB)
        raise ImageLoadError(
            path, f"unsupported color mode {mode!r} ({exc}); convert it to an RGB PNG or JPEG"
        ) from exc


def _gray_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit, 32-bit int or float single-channel array to 0..255."""
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if mode in _16BIT_MODES or (mode == "I" and values.min() >= 0 and values.max() <= 65535):
        top = 65535.0
    else:  # float, or 32-bit ints outside the 16-bit range: scale by the maximum
        top = float(values.max())
    if top <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


def _too_many_pixels(pixels: int | None, max_pixels: int) -> str:
    count = f"{pixels:,} pixels" if pixels is not None else "more pixels than allowed"
    return (
        f"image has {count}, over the limit of {max_pixels:,} (possible decompression bomb); "
        "resize it or raise --max-pixels"
    )


def _pixels_in(exc: BaseException) -> int | None:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    return int(match.group(1)) if match else None


def _corrupt(exc: BaseException) -> str:
    detail = str(exc).strip() or type(exc).__name__
    if len(detail) > 80:
        detail = detail[:77] + "..."
    return f"image is truncated or corrupt ({detail}); re-export or re-download it"


def _unreadable(exc: OSError) -> str:
    return f"cannot read file ({exc.strerror or exc}); check that it exists and is readable"
