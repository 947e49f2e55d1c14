"""FeatureCache: hits, misses, keys, changed files, unreadable files, interrupted writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pixtell.data.features as features_mod
from pixtell.data.features import FeatureCache, default_cache_root, encoder_key, state_dict_digest


def _image(path: Path, color: tuple[int, int, int]) -> Path:
    Image.new("RGB", (8, 6), color).save(path)
    return path


class MeanColour:
    """A stand-in encoder: each image's mean RGB (known exactly); counts what it encodes."""

    def __init__(self) -> None:
        self.encoded = 0

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        self.encoded += len(images)
        return np.stack([np.asarray(im, np.float32).mean(axis=(0, 1)) for im in images])


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    (tmp_path / "img").mkdir()
    colours = [(10, 20, 30), (200, 0, 0), (0, 200, 0), (0, 0, 200), (5, 5, 5)]
    return [_image(tmp_path / "img" / f"{i}.png", c) for i, c in enumerate(colours)]


def test_second_run_hits_the_cache(tmp_path: Path, files: list[Path]) -> None:
    enc = MeanColour()
    cache = FeatureCache("mean|weights=none|size=8", tmp_path / "cache")
    first = cache.compute(files, enc, batch_size=2, progress=False)
    assert enc.encoded == 5
    np.testing.assert_allclose(first[1], [200, 0, 0])
    again = FeatureCache("mean|weights=none|size=8", tmp_path / "cache")  # a new process
    second = again.compute(files, enc, batch_size=2, progress=False)
    assert enc.encoded == 5
    np.testing.assert_array_equal(first, second)
    assert len(again) == 5


def test_only_new_images_are_encoded(tmp_path: Path, files: list[Path]) -> None:
    enc = MeanColour()
    cache = FeatureCache("k", tmp_path / "cache")
    cache.compute(files[:3], enc, progress=False)
    out = cache.compute(files, enc, progress=False)
    assert enc.encoded == 5
    np.testing.assert_allclose(out[3], [0, 0, 200])


def test_different_encoder_keys_do_not_mix(tmp_path: Path, files: list[Path]) -> None:
    enc_a, enc_b = MeanColour(), MeanColour()
    a = FeatureCache(encoder_key("resnet18", "IMAGENET1K_V1", 224), tmp_path / "cache")
    b = FeatureCache(encoder_key("resnet18", "IMAGENET1K_V1", 256), tmp_path / "cache")
    a.compute(files, enc_a, progress=False)
    b.compute(files, enc_b, progress=False)
    assert (enc_a.encoded, enc_b.encoded) == (5, 5)
    assert a.dir != b.dir


def test_a_changed_file_is_recomputed(tmp_path: Path, files: list[Path]) -> None:
    enc = MeanColour()
    cache = FeatureCache("k", tmp_path / "cache")
    cache.compute(files, enc, progress=False)
    _image(files[2], (90, 90, 90))  # same name, new content
    out = cache.compute(files, enc, progress=False)
    assert enc.encoded == 6
    np.testing.assert_allclose(out[2], [90, 90, 90])


def test_renamed_file_still_hits(tmp_path: Path, files: list[Path]) -> None:
    enc = MeanColour()
    cache = FeatureCache("k", tmp_path / "cache")
    cache.compute(files, enc, progress=False)
    moved = files[0].rename(tmp_path / "moved.png")
    out = cache.compute([moved], enc, progress=False)
    assert enc.encoded == 5
    np.testing.assert_allclose(out[0], [10, 20, 30])


def test_unreadable_and_missing_files_are_reported_not_fatal(
    tmp_path: Path, files: list[Path]
) -> None:
    bad = tmp_path / "img" / "bad.png"
    bad.write_bytes(b"not a png at all")
    gone = tmp_path / "img" / "gone.png"
    cache = FeatureCache("k", tmp_path / "cache")
    out = cache.compute([files[0], bad, gone, files[1]], MeanColour(), progress=False)
    assert {p for p, _ in cache.problems} == {bad, gone}
    assert np.isnan(out[1]).all() and np.isnan(out[2]).all()
    np.testing.assert_allclose(out[[0, 3]], [[10, 20, 30], [200, 0, 0]])


def test_get_put_order_and_misses(tmp_path: Path) -> None:
    cache = FeatureCache("k", tmp_path / "cache")
    assert cache.get(["a"]) is None
    cache.put(["a", "b"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    cache.put(["c"], torch.tensor([[5.0, 6.0]]))
    np.testing.assert_array_equal(cache.get(["c", "a", "b", "a"]), [[5, 6], [1, 2], [3, 4], [1, 2]])
    assert cache.get(["a", "zzz"]) is None
    assert cache.missing(["a", "zzz", "zzz"]) == ["zzz"]
    with pytest.raises(ValueError, match="shape"):
        cache.put(["d"], np.zeros((1, 3)))


def test_interrupted_write_is_never_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FeatureCache("k", tmp_path / "cache")
    cache.put(["a"], np.ones((1, 2)))
    real_save = np.save

    def dying_save(fh, arr):  # type: ignore[no-untyped-def]
        real_save(fh, arr)
        fh.truncate(20)  # half a file on disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(features_mod.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        cache.put(["b"], np.full((1, 2), 7.0))
    monkeypatch.undo()
    # A committed marker pointing at a truncated array (e.g. a disk error) is ignored too.
    (cache.dir / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (cache.dir / "broken.json").write_text('{"hashes": ["c"]}')
    fresh = FeatureCache("k", tmp_path / "cache")
    assert fresh.get(["b"]) is None and fresh.get(["c"]) is None
    np.testing.assert_array_equal(fresh.get(["a"]), [[1, 1]])
    assert not [p for p in cache.dir.iterdir() if p.suffix == ".tmp"]
    fresh.put(["b"], np.full((1, 2), 7.0))
    np.testing.assert_array_equal(FeatureCache("k", tmp_path / "cache").get(["b"]), [[7, 7]])


def test_default_root_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIXTELL_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    assert FeatureCache("k").dir.parent == tmp_path / "c"
    monkeypatch.delenv("PIXTELL_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "pixtell" / "features"


def test_keys_identify_encoder_weights_and_size() -> None:
    key = encoder_key("resnet18", "IMAGENET1K_V1", 224, pool="avg")
    assert key == "resnet18|weights=IMAGENET1K_V1|size=224|pool=avg"
    assert encoder_key("vit", None, (224, 160)) == "vit|weights=None|size=224x160"
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert state_dict_digest(a) != state_dict_digest(b)
    b.load_state_dict(a.state_dict())
    assert state_dict_digest(a) == state_dict_digest(b)
