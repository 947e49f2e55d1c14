"""Benchmark: the fast path for small images and scaled JPEG decoding, all in one run.

1. TinyVGG-A at 32 px on 4,000 Fashion-MNIST training images (500 per class exported, 80% of
   them trained on) through ``classify.train`` with ``--cache ram`` and ``--cache none``, and a
   plain PyTorch loop over the same model and images already in memory as normalized tensors
   (no augmentation, same batch size, optimizer and loss): seconds per training epoch (median
   of the epochs after the first; validation excluded) and the ratio to the plain loop.
2. Test accuracy of both ``classify.train`` runs on the official test images (t10k).
3. ``classify predict`` (``Classifier.predict``) on generated 4000x3000 JPEGs of demo scenes
   with and without scaled JPEG decoding (images/s), and the agreement of their top-1
   predictions, with a classifier trained on the demo shapes.

    nice -n 10 python bench/train_speed.py --epochs 5 --jpegs 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.table import Table

from pixtell import classify
from pixtell.classify.predictor import Classifier
from pixtell.data.demo import SHAPES, make_classification_folder, render_scene
from pixtell.data.images import decode_min_size, load_image
from pixtell.data.transforms import build_eval_transform
from pixtell.models import create, get_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import fashion_mnist  # noqa: E402

COMMON = dict(
    model="tinyvgg_a",
    seed=0,
    img_size=32,
    batch_size=32,
    logger=["none"],
    progress=False,
    val_fraction=0.1,
    test_fraction=0.1,
)


class EpochTimer(L.Callback):
    """Seconds of each training epoch, from its start to the start of its validation."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._t: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._t = time.perf_counter()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        if self._t is not None and not trainer.sanity_checking:
            self.seconds.append(time.perf_counter() - self._t)
            self._t = None


def export_fmnist(root: Path, per_class: int, test_per_class: int) -> tuple[Path, Path]:
    src = fashion_mnist.SOURCE
    for split, prefix, n in (("train", "train", per_class), ("test", "t10k", test_per_class)):
        images = fashion_mnist.read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        labels = fashion_mnist.read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
        fashion_mnist.export(images, labels, root / split, n, seed=0)
    return root / "train", root / "test"


def plain_loop(train_dir: Path, epochs: int, seed: int = 0) -> list[float]:
    """A plain PyTorch loop over the same training images, decoded once into one tensor."""
    run_paths = sorted(train_dir.glob("*/*.png"))
    classes = sorted({p.parent.name for p in run_paths})
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(run_paths))[: int(len(run_paths) * 0.8)]  # 80% as classify.train
    spec = get_spec("tinyvgg_a", "classify")
    tf = build_eval_transform(32, mean=spec.mean, std=spec.std)
    x = torch.stack([tf(load_image(run_paths[i])) for i in keep])
    y = torch.tensor([classes.index(run_paths[i].parent.name) for i in keep])
    torch.manual_seed(seed)
    model = create("tinyvgg_a", "classify", num_classes=len(classes), pretrained=False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(x)).split(32):
            if len(idx) < 32:
                continue
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - t0)
    return seconds


def big_demo_jpegs(out: Path, n: int, seed: int = 0) -> list[tuple[Path, str]]:
    """``n`` 4000x3000 JPEGs of demo scenes (one shape each), with the shape as the label."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        scene = render_scene(np.random.default_rng([seed, 99, i]), img_size=300, shape=shape)
        canvas = Image.new("RGB", (400, 300), (128, 128, 128))
        canvas.paste(scene.image, (50, 0))
        big = canvas.resize((4000, 3000), Image.Resampling.BICUBIC)
        noise = np.random.default_rng(i).integers(-6, 7, (3000, 4000, 1), dtype=np.int16)
        big = Image.fromarray(np.clip(np.asarray(big, np.int16) + noise, 0, 255).astype(np.uint8))
        path = out / f"photo_{i:03d}.jpg"
        big.save(path, quality=90)
        files.append((path, shape))
    return files


def time_predict(clf: Classifier, paths: list[Path], scaled: bool) -> tuple[float, list[str]]:
    """Images/s and top-1 labels, with (the default) or without scaled JPEG decoding."""
    clf.min_size = decode_min_size(clf.meta["img_size"]) if scaled else None
    t0 = time.perf_counter()
    preds = clf.predict(paths, topk=1, batch_size=8)
    return len(paths) / (time.perf_counter() - t0), [str(p.label) for p in preds]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=500, help="exported; 80%% trained on")
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="DataLoader workers of classify.train; the engine gives torch CPUs - workers "
        "threads, and the plain loop gets as many",
    )
    ap.add_argument("--jpegs", type=int, default=40)
    ap.add_argument("--work", type=Path, default=None, help="[default: a temporary folder]")
    args = ap.parse_args(argv)
    console = Console()
    work = args.work or Path(tempfile.mkdtemp(prefix="pixtell-train-speed-"))
    train_dir, test_dir = export_fmnist(work / "fmnist", args.per_class, args.test_per_class)
    rows: list[tuple[str, str, str]] = []

    threads = max(1, (os.cpu_count() or 1) - args.workers)
    torch.set_num_threads(threads)
    plain = plain_loop(train_dir, args.epochs)
    plain_s = statistics.median(plain[1:] or plain)
    rows.append(("plain PyTorch loop, s/epoch", f"{plain_s:.2f}", "1.00"))
    acc = {}
    for cache in ("ram", "none"):
        timer = EpochTimer()
        run = classify.train(
            train_dir,
            epochs=args.epochs,
            out=work / "runs",
            name=f"cache-{cache}",
            cache=cache,
            num_workers=args.workers,
            callbacks=[timer],
            **COMMON,
        )
        sec = statistics.median(timer.seconds[1:] or timer.seconds)
        rows.append(
            (f"classify.train --cache {cache}, s/epoch", f"{sec:.2f}", f"{sec / plain_s:.2f}")
        )
        acc[cache] = classify.evaluate(run, data=test_dir).metrics["accuracy"]
        console.print(f"cache {cache}: epochs {[round(s, 2) for s in timer.seconds]}")
    for cache in ("ram", "none"):
        rows.append((f"test accuracy, --cache {cache}", f"{acc[cache]:.4f}", ""))

    shapes = work / "shapes"
    if not shapes.is_dir():  # a --work folder of an earlier run keeps its data
        make_classification_folder(shapes, n_per_class=200, img_size=64, progress=False)
    demo_run = classify.train(
        shapes,
        epochs=args.epochs,
        out=work / "runs",
        name="shapes",
        num_workers=args.workers,
        **COMMON,
    )
    photos = big_demo_jpegs(work / f"photos-{args.jpegs}", args.jpegs)
    paths = [p for p, _ in photos]
    clf = Classifier.from_run(demo_run, device="cpu")
    scaled_ips, scaled = time_predict(clf, paths, scaled=True)
    full_ips, full = time_predict(clf, paths, scaled=False)
    agree = sum(a == b for a, b in zip(scaled, full, strict=True)) / len(paths)
    right = sum(a == t for a, (_, t) in zip(scaled, photos, strict=True)) / len(paths)
    rows.append(("predict 4000x3000 JPEGs, full decode, img/s", f"{full_ips:.1f}", "1.00"))
    rows.append(
        (
            "predict 4000x3000 JPEGs, scaled decode, img/s",
            f"{scaled_ips:.1f}",
            f"{scaled_ips / full_ips:.2f}",
        )
    )
    rows.append(("top-1 agreement scaled vs full (demo photos)", f"{agree:.3f}", ""))
    rows.append(("top-1 accuracy on the demo photos (scaled)", f"{right:.3f}", ""))

    t = Table(title=f"fast path ({threads} torch threads, {args.workers} DataLoader workers)")
    for col in ("measure", "value", "ratio"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    for r in rows:
        t.add_row(*r)
    console.print(t)


if __name__ == "__main__":
    main()
