"""The fast path: scaled JPEG decoding, the decoded-image cache and batched augmentations."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.transforms import v2

from pixtell import classify
from pixtell.data.decoded import BatchAugment, DecodedImages, resolve_cache_mode
from pixtell.data.images import load_image
from pixtell.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_train_transform
from pixtell.engine import TrainingInterrupted
from tests.conftest import FAST


def _halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: any rotation or flip shows."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2, 0] = 255
    arr[:, width // 2 :, 2] = 255
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def rotated_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jpeg") / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 800x600, shown rotated 90° clockwise: 600 wide, 800 high
    _halves(800, 600).save(path, quality=95, exif=exif)
    return path


# shorter side 600: JPEG scales 1/8, 1/4, 1/2 give 75, 150, 300 px; the largest reduction that
# keeps >= min_size wins, and below 2 x min_size the file is decoded at full size
@pytest.mark.parametrize(
    ("min_size", "expected"),
    [(1, 75), (37, 75), (75, 75), (76, 150), (149, 150), (150, 150), (151, 300), (300, 300)]
    + [(301, 600), (1000, 600)],
)
def test_draft_keeps_orientation_and_the_shorter_side(
    rotated_jpeg: Path, min_size: int, expected: int
) -> None:
    full = load_image(rotated_jpeg)
    assert full.size == (600, 800)
    small = load_image(rotated_jpeg, min_size=min_size)
    assert min(small.size) >= min(min_size, 600)
    assert small.size[0] / small.size[1] == pytest.approx(600 / 800, abs=0.01)
    assert min(small.size) == expected
    # same picture as the fully decoded one, shrunk: red on top, blue at the bottom after EXIF
    ref = np.asarray(full.resize(small.size, Image.Resampling.BOX), np.float32)
    assert np.abs(np.asarray(small, np.float32) - ref).mean() < 8
    top, bottom = np.asarray(small)[: small.size[1] // 4], np.asarray(small)[-small.size[1] // 4 :]
    assert top[..., 0].mean() > 200 and bottom[..., 2].mean() > 200


def test_draft_leaves_other_formats_alone(tmp_path: Path) -> None:
    _halves(400, 300).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", min_size=20).size == (400, 300)
    with pytest.raises(ValueError, match="min_size"):
        load_image(tmp_path / "a.png", min_size=0)


def _reference(path: Path, size: int) -> np.ndarray:
    tf = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    return np.array(tf(load_image(path)))


@pytest.fixture()
def small_images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(28, 28), (50, 40), (30, 64), (41, 41)]):
        p = tmp_path / "imgs" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("mode", ["ram", "disk"])
def test_decoded_cache_equals_direct_decoding(
    small_images: list[Path], tmp_path: Path, mode: str
) -> None:
    bad = tmp_path / "imgs" / "bad.png"
    bad.write_bytes(b"not a png")
    paths = [*small_images, bad]
    images = DecodedImages(paths, 36, mode=mode, root=tmp_path / "cache")  # type: ignore[arg-type]
    assert images.ok.tolist() == [True] * 4 + [False]
    assert [p for p, _ in images.problems] == [bad]
    for i, p in enumerate(small_images):
        assert np.array_equal(images.array[i], _reference(p, 36))
        assert torch.equal(images.tensor(i), torch.from_numpy(_reference(p, 36)).permute(2, 0, 1))


def test_disk_cache_is_keyed_by_content(small_images: list[Path], tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first = DecodedImages(small_images, 32, mode="disk", root=root)
    again = DecodedImages(small_images, 32, mode="disk", root=root)
    assert again.file == first.file and isinstance(again.array, np.memmap)
    other_size = DecodedImages(small_images, 30, mode="disk", root=root)
    assert other_size.file != first.file
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(small_images[1])  # edited file
    edited = DecodedImages(small_images, 32, mode="disk", root=root)
    assert edited.file != first.file
    assert np.array_equal(edited.array[1], np.full((32, 32, 3), 7, np.uint8))
    assert np.array_equal(edited.array[0], first.array[0])


def test_auto_cache_mode() -> None:
    assert resolve_cache_mode("auto", 4000, 40) == "ram"
    assert resolve_cache_mode("auto", 4000, 40, budget_bytes=1000) == "disk"
    assert resolve_cache_mode("auto", 10, 280) == "none"
    assert resolve_cache_mode("auto", 10, 40, augment="rrc") == "none"
    with pytest.raises(ValueError, match="--augment"):
        resolve_cache_mode("ram", 10, 40, augment="rrc")


def _bounds(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.tensor([(0 - m) / s for m, s in zip(mean, std, strict=True)]).view(3, 1, 1)
    hi = torch.tensor([(1 - m) / s for m, s in zip(mean, std, strict=True)]).view(3, 1, 1)
    return lo, hi


def test_batch_augment_keeps_size_and_range_of_the_pil_transform() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 256, (16, 40, 40, 3), np.uint8)).permute(0, 3, 1, 2)
    pil_tf = build_train_transform(32, scale_jitter=(1.0, 1.25), color_jitter=0.4)
    aug = BatchAugment(32, scale_jitter=(1.0, 1.25), color_jitter=0.4)
    assert aug.storage_size == 40
    out = aug.train(x, torch.arange(16) * 7919)
    lo, hi = _bounds(IMAGENET_MEAN, IMAGENET_STD)
    for i in range(16):
        ref = pil_tf(Image.fromarray(x[i].permute(1, 2, 0).numpy()))
        assert out[i].shape == ref.shape == (3, 32, 32)
        for t in (out[i], ref):
            assert (t >= lo - 1e-5).all() and (t <= hi + 1e-5).all()
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert aug.eval(x).shape == (16, 3, 32, 32)


def test_batch_augment_draws_per_sample_not_per_batch() -> None:
    x = torch.randint(0, 256, (8, 3, 40, 40), dtype=torch.uint8)
    seeds = torch.arange(8) * 1_000_003 + 5
    aug = BatchAugment(32, color_jitter=0.3)
    whole = aug.train(x, seeds)
    perm = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    assert torch.allclose(aug.train(x[perm], seeds[perm]), whole[perm], atol=1e-5)
    assert torch.allclose(aug.train(x[2:3], seeds[2:3]), whole[2:3], atol=1e-5)
    assert not torch.allclose(whole[0], aug.train(x[:1], seeds[:1] + 1)[0])


def test_batch_augment_crops_and_flips_like_torchvision() -> None:
    # no scale jitter, no colour: every output is a 32 crop of the input, maybe flipped
    x = torch.randint(0, 256, (12, 3, 40, 40), dtype=torch.uint8)
    aug = BatchAugment(32, scale_jitter=(1.25, 1.25), color_jitter=0.0, mean=(0,) * 3, std=(1,) * 3)
    out = (aug.train(x, torch.arange(12) + 11) * 255).round().to(torch.uint8)
    flipped = 0
    for i in range(12):
        crops = set()
        for t in range(9):
            for le in range(9):
                c = x[i, :, t : t + 32, le : le + 32]
                if torch.equal(out[i], c):
                    crops.add((t, le, False))
                if torch.equal(out[i], c.flip(-1)):
                    crops.add((t, le, True))
        assert crops, i
        flipped += any(f for *_, f in crops)
    assert 0 < flipped < 12


@pytest.mark.parametrize("cache", ["ram", "none"])
def test_train_with_and_without_the_cache(shapes_dir: Path, tmp_path: Path, cache: str) -> None:
    run = classify.train(shapes_dir, epochs=1, out=tmp_path, cache=cache, **FAST)
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["cache"] == cache
    assert (run.dir / "best.safetensors").is_file()
    with open(run.dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    assert losses and all(np.isfinite(losses))


class _Interrupt(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.current_epoch == 1 and batch_idx == 1:
            raise KeyboardInterrupt


def test_resume_is_exact_with_the_cache(shapes_dir: Path, tmp_path: Path) -> None:
    kw = {**FAST, "epochs": 2, "cache": "ram", "color_jitter": 0.3}
    straight = classify.train(shapes_dir, out=tmp_path, name="straight", **kw)
    with pytest.raises(TrainingInterrupted) as info:
        classify.train(shapes_dir, out=tmp_path, name="cut", callbacks=[_Interrupt()], **kw)
    resumed = classify.train(resume=info.value.run.dir)

    def values(run_dir: Path) -> dict[int, float]:
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return {int(r["epoch"]): float(r["val_loss"]) for r in rows if r.get("val_loss")}

    a, b = values(straight.dir), values(resumed.dir)
    assert sorted(a) == [0, 1] and a.keys() == b.keys()
    for e in a:
        assert a[e] == pytest.approx(b[e], abs=1e-6)


def test_per_sample_seeding_uses_only_the_cpu_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.manual_seed also queues lazy CUDA/XPU/MTIA seeding with a captured stack trace on
    a GPU build of torch without a GPU: per sample that cost as much as the training step."""
    from pixtell.data.sampling import SeededDataset

    class Draw(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(4)

    def refuse(seed: int) -> None:
        raise AssertionError("per-sample seeding went through torch.manual_seed")

    before = torch.get_rng_state()
    monkeypatch.setattr(torch, "manual_seed", refuse)
    ds = SeededDataset(Draw())
    got = ds[(1, 1234)]
    assert torch.equal(got, torch.rand(4, generator=torch.Generator().manual_seed(1234)))
    assert torch.equal(ds[(2, 1234)], got)  # the seed alone decides the draws
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream is untouched


def test_cached_augmentation_in_workers_equals_on_the_training_device(
    shapes_dir: Path, tmp_path: Path
) -> None:
    """On the CPU a worker runs the batched augmentation (collate); with no worker it runs in
    on_after_batch_transfer. Per-sample seeds make both give the same training."""
    settings = {**FAST, "cache": "ram", "epochs": 2}
    runs = [
        classify.train(shapes_dir, out=tmp_path, name=f"w{n}", **{**settings, "num_workers": n})
        for n in (0, 1)
    ]
    metrics = []
    for run in runs:
        with open(run.dir / "metrics.csv", newline="") as f:
            metrics.append([float(r["val_loss"]) for r in csv.DictReader(f) if r.get("val_loss")])
    assert len(metrics[0]) == 2 and metrics[0] == pytest.approx(metrics[1], abs=1e-6)


def test_evaluate_and_predict_reuse_a_decoded_copy_with_the_same_predictions(
    shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run trained with --cache: evaluation and prediction read the images decoded once on
    disk (the exact pixels of the evaluation transform) and give the PIL path's output."""
    monkeypatch.setenv("PIXTELL_CACHE", str(tmp_path / "cache"))
    run = classify.train(shapes_dir, epochs=1, out=tmp_path, cache="ram", **FAST)
    clf = classify.Classifier.from_run(run)
    paths = sorted(shapes_dir.rglob("*.png"))[:20] + [tmp_path / "missing.png"]
    direct = dict(clf.iter_probs(paths, cache="none"))
    cached = dict(clf.iter_probs(paths, cache="auto"))
    files = list((tmp_path / "cache" / "decoded").glob("*.npy"))
    assert len(files) == 1  # made on the first call ...
    stamp = files[0].stat().st_mtime_ns
    again = dict(clf.iter_probs(paths, cache="auto"))
    assert files[0].stat().st_mtime_ns == stamp  # ... and met again
    assert isinstance(cached[20], str) and isinstance(direct[20], str)  # the missing file
    for i in range(20):
        assert torch.allclose(cached[i], direct[i], atol=1e-6)
        assert torch.equal(again[i], cached[i])
    res = classify.evaluate(run, out=tmp_path / "eval")
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npy"))) == 2  # the test split
    labels = [p.label for p in classify.predict(run, paths[:20])]
    assert labels == [clf.classes[int(direct[i].argmax())] for i in range(20)]
    assert res.metrics["n"] > 0
