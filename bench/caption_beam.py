"""Batched vs per-image beam search: same captions, how much faster.

    python bench/caption_beam.py [--images 64] [--beam 5] [--max-len 20] [--threads 1]

Decodes ``images`` random feature maps with an untrained Show, Attend and Tell model of the
demo size (small_cnn encoder, 8×8 grid, 100 words) twice: ``beam_search`` (every image and
beam in one batch, one ``step`` per time step) and ``beam_search_single`` (one image at a
time). Asserts identical captions and prints a table with the speed-up.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from pixtell.caption.decoding import beam_search, beam_search_single
from pixtell.models import create


def bench_beam(
    n_images: int = 64,
    beam_size: int = 5,
    max_len: int = 20,
    vocab_size: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """Wall and CPU seconds of both searches (best of 2) and the ratios.

    CPU time (``time.process_time``) is reported too because on a shared machine the wall
    clock measures the neighbours as much as the code. Raises if the captions differ.
    """
    torch.manual_seed(seed)
    net = create("show_attend_tell", "caption", num_classes=vocab_size).eval()
    with torch.no_grad():
        net.fc.bias[2] -= 1.0  # an untrained model would say <end> at once; make it talk
        feats = net.encode(torch.randn(n_images, 3, 64, 64))
    kw = dict(beam_size=beam_size, max_len=max_len)
    times: dict[str, float] = {}
    results = {}
    for name, fn in (("batched", beam_search), ("per_image", beam_search_single)):
        wall = cpu = float("inf")
        for _ in range(2):
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn(net, feats, **kw)
            wall = min(wall, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        times[name], times[f"{name}_cpu"] = wall, cpu
    got = [h[0].tokens for h in results["batched"]]
    want = [h[0].tokens for h in results["per_image"]]
    assert got == want, "batched beam search disagrees with the per-image reference"
    words = sum(len(t) for t in got) / len(got)
    return {
        **times,
        "ratio": times["per_image"] / times["batched"],
        "cpu_ratio": times["per_image_cpu"] / times["batched_cpu"],
        "mean_words": words,
    }


def main() -> None:
    """Command-line entry point: print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--max-len", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    r = bench_beam(args.images, args.beam, args.max_len)
    table = Table(title=f"beam search, {args.images} images, beam {args.beam}")
    for col in ("search", "wall s", "CPU s", "images/s (wall)"):
        table.add_column(col, justify="right")
    for name in ("per_image", "batched"):
        table.add_row(
            name, f"{r[name]:.3f}", f"{r[name + '_cpu']:.3f}", f"{args.images / r[name]:.1f}"
        )
    table.add_row("ratio", f"{r['ratio']:.1f}x", f"{r['cpu_ratio']:.1f}x", "")
    Console().print(table)
    print(f"same captions (mean {r['mean_words']:.1f} words)")


if __name__ == "__main__":
    main()
