"""Benchmark: decoding + training augmentation throughput through a DataLoader.

Generates demo shapes into a temporary folder, then for each ``num_workers``
setting passes over the data ``--epochs`` times with the training transform and
reports images per second (the first, warm-up batch excluded) and the ratio to
0 workers. All settings run one after the other in this one process.

    python bench/dataloading.py --n-per-class 100 --img-size 32 --workers 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from pixtell.classify.data import ImageListDataset
from pixtell.data.demo import make_classification_folder
from pixtell.data.folders import scan_image_folder
from pixtell.data.transforms import build_train_transform


@dataclass
class Result:
    """One setting's measurement."""

    workers: int
    images: int
    seconds: float
    images_per_s: float
    ratio: float = 1.0
    all_images_per_s: list[float] = field(default_factory=list)  # every repeat


def measure(ds: Dataset, workers: int, batch_size: int, epochs: int, seed: int) -> Result:
    """Images/s over ``epochs`` shuffled passes, timed from the end of the first batch."""
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    images, start = 0, None
    for _ in range(epochs):
        for x, _y in loader:
            if start is None:  # warm-up batch: worker start-up, first decode
                start = time.perf_counter()
                continue
            images += x.shape[0]
    seconds = time.perf_counter() - start if start is not None else 0.0
    del loader
    return Result(workers, images, seconds, images / seconds if seconds > 0 else 0.0)


def run(args: argparse.Namespace, console: Console) -> list[Result]:
    """Generate the data, then measure every ``--workers`` setting ``--repeats`` times."""
    with tempfile.TemporaryDirectory(prefix="pixtell-bench-") as tmp:
        root = make_classification_folder(
            Path(tmp) / "shapes",
            n_per_class=args.n_per_class,
            img_size=args.data_size,
            seed=args.seed,
            progress=console.is_terminal,
        )
        scan = scan_image_folder(root, fractions=(1.0, 0.0, 0.0), progress=False)
        ds = ImageListDataset(scan.splits["train"], build_train_transform(args.img_size))
        console.print(
            f"{len(ds)} images of {args.data_size}px -> {args.img_size}px, "
            f"batch {args.batch_size}, {args.epochs} epochs per setting"
        )
        runs: dict[int, list[Result]] = {w: [] for w in args.workers}
        for rep in range(args.repeats):
            for w in args.workers:
                runs[w].append(measure(ds, w, args.batch_size, args.epochs, args.seed + rep))
    results = [_median(rs) for rs in runs.values()]
    base = next((r.images_per_s for r in results if r.workers == 0), results[0].images_per_s)
    for r in results:
        r.ratio = r.images_per_s / base if base > 0 else 0.0
    return results


def _median(results: list[Result]) -> Result:
    """The run with the median throughput, carrying every repeat's throughput."""
    speeds = sorted(results, key=lambda r: r.images_per_s)
    mid = speeds[(len(speeds) - 1) // 2]
    mid.all_images_per_s = [round(r.images_per_s, 1) for r in results]
    return mid


def table(results: list[Result]) -> Table:
    """Rich table: workers | images/s (median) | ratio vs 0 workers | every repeat."""
    t = Table(title="decode + train augmentation")
    t.add_column("workers", justify="right")
    t.add_column("images/s", justify="right")
    t.add_column("ratio vs 0 workers", justify="right")
    t.add_column("repeats (images/s)", justify="right", style="dim")
    for r in results:
        reps = " ".join(f"{v:,.0f}" for v in r.all_images_per_s)
        t.add_row(str(r.workers), f"{r.images_per_s:,.0f}", f"{r.ratio:.2f}x", reps)
    return t


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-per-class", type=int, default=100, help="images per class (6 classes)")
    p.add_argument("--data-size", type=int, default=64, help="side of the generated images")
    p.add_argument("--img-size", type=int, default=32, help="training input size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="passes over the data per setting")
    p.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    p.add_argument("--repeats", type=int, default=3, help="rounds over all settings; median")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the table, optionally write JSON."""
    args = parse_args(argv)
    console = Console()
    results = run(args, console)
    console.print(table(results))
    if args.json is not None:
        info = {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        }
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        payload = {"settings": settings, "machine": info, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
