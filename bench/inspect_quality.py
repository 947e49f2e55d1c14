"""Benchmark: how well ``classify inspect`` finds flipped labels and planted copies.

Exports Fashion-MNIST class folders (``examples/fashion_mnist.py``), moves a seeded 5% of
the files into a wrong class folder, places resized / JPEG re-encoded copies of a few other
files into other classes, runs ``inspect`` once and prints recall of the flipped files,
precision of its top-N label findings (N = number flipped), copies found and run time.

    python bench/inspect_quality.py --per-class 200
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from pixtell.classify.inspect import inspect

ROOT = Path(__file__).resolve().parents[1]


def plant(data: Path, flip_frac: float, n_copies: int, seed: int) -> tuple[dict, dict]:
    """Flip labels and add copies; return {flipped rel path: true class}, {copy: original}."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    files = sorted(data.glob("*/*.png"))
    picks = rng.choice(
        len(files), size=int(round(flip_frac * len(files))) + n_copies, replace=False
    )
    flipped, copies = {}, {}
    for i in picks[n_copies:]:
        src = files[i]
        wrong = rng.choice([c for c in classes if c != src.parent.name])
        src.rename(data / wrong / src.name)
        flipped[f"{wrong}/{src.name}"] = src.parent.name
    for n, i in enumerate(picks[:n_copies]):
        src = files[i]
        other = rng.choice([c for c in classes if c != src.parent.name])
        image = Image.open(src).convert("RGB")
        size = (56, 56) if n % 2 == 0 else (24, 24)  # upscaled / downscaled
        buf = io.BytesIO()
        image.resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=70 + 10 * (n % 3))
        dest = data / other / f"copy_{n}_{src.stem}.jpg"
        dest.write_bytes(buf.getvalue())
        copies[dest.relative_to(data).as_posix()] = src.relative_to(data).as_posix()
    return flipped, copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--flip", type=float, default=0.05, help="fraction of labels flipped")
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixtell-inspect-") as tmp:
        export = Path(tmp) / "fm"
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "fashion_mnist.py"),
                "--out",
                str(export),
                "--per-class",
                str(args.per_class),
                "--test-per-class",
                "1",
            ],
            check=True,
            capture_output=True,
        )
        data = export / "train"
        flipped, copies = plant(data, args.flip, args.copies, args.seed)
        n_images = len(list(data.glob("*/*")))
        start = time.perf_counter()
        res = inspect(data, out=Path(tmp) / "out", folds=args.folds, seed=args.seed)
        seconds = time.perf_counter() - start
        with open(res.dir / "label_issues.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        with open(res.dir / "duplicates.csv", newline="") as f:
            groups: dict[str, set[str]] = {}
            for r in csv.DictReader(f):
                groups.setdefault(r["group"], set()).add(r["path"])
    found = {r["path"] for r in rows}
    n = len(flipped)
    top = [r["path"] for r in rows[:n]]
    right_class = sum(
        r["suggested"] == flipped.get(r["path"]) for r in rows if r["path"] in flipped
    )
    copies_found = sum(any({c, o} <= g for g in groups.values()) for c, o in copies.items())
    copies_found_by_label = sum(c in found for c in copies)  # the copy itself looks mislabeled
    false_groups = sum(not any({c, o} <= g for c, o in copies.items()) for g in groups.values())
    table = Table(title=f"inspect on Fashion-MNIST ({n_images} images)")
    for col in ("measure", "value"):
        table.add_column(col)
    for name, value in (
        ("flipped files (N)", n),
        ("label findings", len(rows)),
        ("recall of flipped (all findings)", f"{sum(p in found for p in flipped) / n:.2f}"),
        ("precision of top-N findings", f"{sum(p in flipped for p in top) / n:.2f}"),
        (
            "precision of all findings",
            f"{sum(p in flipped for p in found) / max(1, len(rows)):.2f}",
        ),
        ("found flips with the right suggested class", f"{right_class}"),
        ("copies found as duplicates", f"{copies_found} / {len(copies)}"),
        ("copies also among label findings", f"{copies_found_by_label} / {len(copies)}"),
        ("duplicate groups that are not planted copies", f"{false_groups}"),
        ("inspect run time", f"{seconds:.1f} s"),
        ("label-error method", res.method),
    ):
        table.add_row(name, str(value))
    Console().print(table)


if __name__ == "__main__":
    main()
