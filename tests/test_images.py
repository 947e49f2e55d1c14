"""Tests for pixtell.data.images: safe loading, conversions to RGB and clear errors."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pixtell.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageLoadError,
    check_image,
    file_sha256,
    is_image_file,
    load_image,
)


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _noise(size: tuple[int, int] = (48, 40), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _assert_rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


# ----------------------------------------------------------------------------- basics


def test_constants() -> None:
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"} == IMAGE_EXTENSIONS


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", True),
        ("a.JPEG", True),
        ("b/c.Png", True),
        ("x.TIFF", True),
        ("a.txt", False),
        ("jpg", False),
        ("a.jpg.bak", False),
    ],
)
def test_is_image_file(name: str, expected: bool) -> None:
    assert is_image_file(name) is expected
    assert is_image_file(Path(name)) is expected


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 50
    path.write_bytes(data)
    assert file_sha256(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp", "webp", "tiff", "gif"])
def test_rgb_round_trip_each_format(tmp_path: Path, ext: str) -> None:
    src = _noise()
    path = _save(src, tmp_path / f"a.{ext}")
    img = load_image(path)
    assert img.size == src.size
    arr = _assert_rgb(img)
    if ext in ("png", "bmp", "tiff"):
        assert np.array_equal(arr, np.asarray(src))
    assert check_image(path) is None


def test_returned_image_is_independent_of_the_file(tmp_path: Path) -> None:
    path = _save(_noise(), tmp_path / "a.png")
    img = load_image(path)
    path.unlink()
    assert img.getpixel((0, 0)) == _noise().getpixel((0, 0))
    assert img.copy().size == (48, 40)


# ----------------------------------------------------------------------------- conversions


def test_grayscale_l_to_rgb(tmp_path: Path) -> None:
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    arr = _assert_rgb(load_image(_save(gray, tmp_path / "g.png")))
    assert np.array_equal(arr[..., 0], np.asarray(gray))
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_bilevel_to_rgb(tmp_path: Path) -> None:
    img = Image.new("1", (8, 8), 0)
    img.putpixel((3, 3), 1)
    arr = _assert_rgb(load_image(_save(img, tmp_path / "b.png")))
    assert tuple(arr[3, 3]) == (255, 255, 255) and tuple(arr[0, 0]) == (0, 0, 0)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    img.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black -> mid gray
    arr = _assert_rgb(load_image(_save(img, tmp_path / "a.png")))
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert np.all(np.abs(arr[0, 1] - 127) <= 2)
    assert tuple(arr[5, 5]) == (255, 0, 0)


def test_la_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("LA", (8, 8), (0, 255))
    img.putpixel((2, 2), (0, 0))
    arr = _assert_rgb(load_image(_save(img, tmp_path / "la.png")))
    assert tuple(arr[2, 2]) == (255, 255, 255) and tuple(arr[0, 0]) == (0, 0, 0)


def test_palette_with_transparency_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    img.putpixel((4, 4), 0)
    path = _save(img, tmp_path / "p.png", transparency=0)
    assert Image.open(path).info.get("transparency") == 0
    arr = _assert_rgb(load_image(path))
    assert tuple(arr[4, 4]) == (255, 255, 255)  # transparent black must not come out black
    assert tuple(arr[0, 0]) == (0, 0, 255)


def test_rgb_png_with_transparent_colour_put_on_white(tmp_path: Path) -> None:
    img = Image.new("RGB", (8, 8), (10, 200, 30))
    img.putpixel((2, 5), (0, 0, 0))
    path = _save(img, tmp_path / "trns.png", transparency=(0, 0, 0))  # writes a tRNS chunk
    assert b"tRNS" in path.read_bytes()
    assert Image.open(path).info["transparency"] == (0, 0, 0)
    arr = _assert_rgb(load_image(path))
    assert tuple(arr[5, 2]) == (255, 255, 255)  # the transparent colour must not come out black
    assert tuple(arr[0, 0]) == (10, 200, 30)
    assert (arr == (255, 255, 255)).all(axis=2).sum() == 1


@pytest.mark.parametrize(("mode", "dtype"), [("L", np.uint8), ("I;16", np.uint16)])
def test_grey_png_with_transparent_value_put_on_white(
    tmp_path: Path, mode: str, dtype: type
) -> None:
    values = np.full((4, 4), 3, dtype=dtype)
    values[1, 2] = 7
    img = Image.fromarray(values)
    assert img.mode == mode
    path = _save(img, tmp_path / "g.png", transparency=7)
    assert Image.open(path).info["transparency"] == 7
    arr = _assert_rgb(load_image(path))
    assert tuple(arr[1, 2]) == (255, 255, 255)
    black = 3 if mode == "L" else 0  # 3 of 65535 rounds to 0 of 255
    assert tuple(arr[0, 0]) == (black, black, black)


def test_palette_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    arr = _assert_rgb(load_image(_save(img, tmp_path / "p.bmp")))
    assert tuple(arr[0, 0]) == (10, 200, 30)


def test_16bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535, 257 * 10]], dtype=np.uint16).repeat(4, axis=0)
    path = _save(Image.fromarray(values), tmp_path / "d16.png")
    assert Image.open(path).mode in ("I;16", "I")
    arr = _assert_rgb(load_image(path))
    assert list(arr[0, :, 0]) == [0, 128, 255, 10]
    assert np.array_equal(arr[..., 0], arr[..., 2])


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_other_16bit_modes_scaled(tmp_path: Path, mode: str) -> None:
    values = np.array([[0, 32768, 65535, 2570]], dtype=np.uint16).repeat(4, axis=0)
    img = Image.fromarray(values).convert(mode) if mode == "I" else _as_i16b(values)
    path = _save(img, tmp_path / "d16.tif")
    assert Image.open(path).mode == mode
    arr = _assert_rgb(load_image(path))
    assert list(arr[0, :, 1]) == [0, 128, 255, 10]


def _as_i16b(values: np.ndarray) -> Image.Image:
    return Image.frombytes("I;16B", values.shape[::-1], values.astype(">u2").tobytes())


def test_float_scaled_by_max(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.25, 0.5, 2.0]], dtype=np.float32).repeat(4, axis=0)
    path = _save(Image.fromarray(values), tmp_path / "f.tif")
    assert Image.open(path).mode == "F"
    arr = _assert_rgb(load_image(path))
    assert list(arr[0, :, 0]) == [0, 32, 64, 255]


@pytest.mark.parametrize("ext", ["jpg", "tif"])
def test_cmyk_to_rgb(tmp_path: Path, ext: str) -> None:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    path = _save(img, tmp_path / f"c.{ext}")
    assert Image.open(path).mode == "CMYK"
    arr = _assert_rgb(load_image(path))
    assert np.all(np.abs(arr[8, 8] - np.array([255, 0, 0])) <= 8)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (64, 32), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 32, 32))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(img, tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.size == (32, 64)
    arr = _assert_rgb(out)
    assert arr[8, 16, 0] > 200 and arr[8, 16, 2] < 60  # the left half is now on top
    assert arr[56, 16, 2] > 200 and arr[56, 16, 0] < 60


def test_multiframe_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert Image.open(path).n_frames == 2
    assert tuple(_assert_rgb(load_image(path))[4, 4]) == (255, 0, 0)


def test_multiframe_tiff_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("L", (8, 8), v) for v in (10, 200)]
    path = tmp_path / "pages.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert tuple(_assert_rgb(load_image(path))[4, 4]) == (10, 10, 10)


# ----------------------------------------------------------------------------- errors


def _load_error(path: Path, **kwargs) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path, **kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == path
    assert str(err) == f"{path}: {err.reason}"
    assert str(path) in str(err)
    assert check_image(path, **kwargs) == err.reason
    return err


def test_missing_file(tmp_path: Path) -> None:
    err = _load_error(tmp_path / "nope.jpg")
    assert err.reason == "file not found; check the path"


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    err = _load_error(path)
    assert err.reason == "file is empty (0 bytes); remove it or replace it with a valid image"


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    folder = tmp_path / "dir.jpg"
    folder.mkdir()
    assert "folder" in _load_error(folder).reason


def test_text_file_renamed_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n" * 10)
    err = _load_error(path)
    assert err.reason.startswith("not an image Pillow can read (cannot identify image file)")
    assert "PNG/JPEG" in err.reason


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_image_raises(tmp_path: Path, ext: str) -> None:
    path = _truncate(_save(_noise((64, 64)), tmp_path / f"t.{ext}"))
    err = _load_error(path)
    assert err.reason.startswith("image is truncated or corrupt (")
    assert err.reason.endswith("re-export or re-download it")


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_raises_even_when_pillow_allows_truncation(
    tmp_path: Path, ext: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = _truncate(_save(_noise((64, 64)), tmp_path / f"t.{ext}"))
    assert "truncated or corrupt" in _load_error(path).reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global flag is restored


def test_corrupt_png_body(tmp_path: Path) -> None:
    path = _save(_noise((32, 32)), tmp_path / "c.png")
    data = bytearray(path.read_bytes())
    data[60:200] = bytes(140)  # zero out part of the compressed data
    path.write_bytes(bytes(data))
    assert "truncated or corrupt" in _load_error(path).reason


def test_pixel_limit_checked_before_decoding(tmp_path: Path) -> None:
    path = _save(_noise((20, 10)), tmp_path / "big.png")
    err = _load_error(path, max_pixels=199)
    assert err.reason == (
        "image has 200 pixels, over the limit of 199 (possible decompression bomb); "
        "resize it or raise --max-pixels"
    )
    assert load_image(path, max_pixels=200).size == (20, 10)


def test_pixel_limit_formats_thousands(tmp_path: Path) -> None:
    path = _save(Image.new("L", (1000, 1200)), tmp_path / "big.png")
    assert (
        "image has 1,200,000 pixels, over the limit of 1,000"
        in _load_error(path, max_pixels=1000).reason
    )


def test_pillow_bomb_warning_and_error_do_not_leak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warn_size = _save(_noise((40, 40)), tmp_path / "warn.png")  # 1600: Pillow warns
    error_size = _save(_noise((64, 64)), tmp_path / "error.png")  # 4096: Pillow raises
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(warn_size).size == (40, 40)
        assert load_image(error_size).size == (64, 64)  # our limit is higher than Pillow's
        err = _load_error(error_size, max_pixels=3000)
        assert "image has 4,096 pixels, over the limit of 3,000" in err.reason
        assert "image has 1,600 pixels" in _load_error(warn_size, max_pixels=1500).reason
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_error_is_picklable(tmp_path: Path) -> None:
    err = ImageLoadError(tmp_path / "x.png", "file not found; check the path")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason, str(back)) == (err.path, err.reason, str(err))


def test_eps_is_not_decoded(tmp_path: Path) -> None:
    path = tmp_path / "evil.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    assert "cannot identify image file" in _load_error(path).reason
