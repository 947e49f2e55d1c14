"""Export Fashion-MNIST (Debian's ``dataset-fashion-mnist`` package) as PNG class folders.

    apt-get install dataset-fashion-mnist
    python examples/fashion_mnist.py --out data/fmnist --per-class 500 --test-per-class 300
    pixtell classify train data/fmnist/train --model tinyvgg_b --img-size 32
    pixtell classify evaluate runs/classify/tinyvgg_b --data data/fmnist/test

``train/`` takes images from the official training set (pixtell splits it into
train/val/test itself); ``test/`` takes images from the official test set (t10k), which
training never sees.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format) as a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def export(images: np.ndarray, labels: np.ndarray, out: Path, per_class: int, seed: int) -> int:
    """Write ``per_class`` seeded-random images of each class as ``out/<class>/<index>.png``."""
    rng = np.random.default_rng(seed)
    n = 0
    for c, name in enumerate(CLASSES):
        idx = np.flatnonzero(labels == c)
        chosen = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in chosen:
            Image.fromarray(images[i], mode="L").save(out / name / f"{i:05d}.png")
        n += len(chosen)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/fmnist"))
    ap.add_argument("--per-class", type=int, default=500, help="from the official train set")
    ap.add_argument("--test-per-class", type=int, default=300, help="from the official test set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", type=Path, default=SOURCE)
    args = ap.parse_args()
    if not (args.source / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(
            f"{args.source} has no Fashion-MNIST files; "
            "run `apt-get install dataset-fashion-mnist` first"
        )
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty; choose another --out")
    for split, prefix, per_class in (
        ("train", "train", args.per_class),
        ("test", "t10k", args.test_per_class),
    ):
        images = read_idx(args.source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.source / f"{prefix}-labels-idx1-ubyte.gz")
        n = export(images, labels, args.out / split, per_class, args.seed)
        print(f"{split}: {n} images → {args.out / split}")


if __name__ == "__main__":
    main()
