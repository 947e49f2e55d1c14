"""Benchmark: caption scoring, ours vs the COCO caption toolkit, in one process.

Generates seeded candidates and references from a small vocabulary (so n-grams overlap and
scores are not trivial), then times ``pixtell.metrics.caption.score`` (tokenize + BLEU +
ROUGE-L + CIDEr, no METEOR) against pycocoevalcap's PTBTokenizer + Bleu(4) + Rouge + Cider
called the way COCOEvalCap calls them, checks that every number agrees to 1e-6 and prints
a table (method, seconds, ratio). With ``--only all`` (the default) it also runs the batched
vs per-image beam search (``caption_beam.py``) and cached vs recomputed encoder features
(``caption_cache.py``) in the same process and prints the three ratios together.

    python bench/caption.py --images 5000 --refs 5
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from pixtell.metrics.caption import score

_VOCAB = str.split(
    "a the man woman dog cat two young red blue white on in with at of sits runs rides "
    "holding ball grass field street table bike is are next to near plate food"
)


@dataclass
class Row:
    """One timed method."""

    method: str
    seconds: float
    ratio: float = 1.0


def make_captions(
    n_images: int, n_refs: int, seed: int
) -> tuple[dict[int, list[str]], dict[int, str]]:
    """Seeded references and candidates: 6-15 words, some capitals and punctuation."""
    rng = random.Random(seed)

    def sent() -> str:
        words = [rng.choice(_VOCAB) for _ in range(rng.randint(6, 15))]
        words[0] = words[0].capitalize()
        return " ".join(words) + rng.choice([".", " .", "", "!"])

    refs = {i: [sent() for _ in range(n_refs)] for i in range(n_images)}
    return refs, {i: sent() for i in refs}


def coco_score(references: dict, candidates: dict) -> dict[str, float]:
    """pycocoevalcap as COCOEvalCap.evaluate runs it, without METEOR and SPICE."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    res = tok.tokenize({k: [{"caption": candidates[k]}] for k in references})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"Bleu_{k + 1}": v for k, v in enumerate(bleu)}
    out["ROUGE_L"], _ = Rouge().compute_score(gts, res)
    out["CIDEr"], _ = Cider().compute_score(gts, res)
    return out


def bench_scoring(n_images: int, n_refs: int, seed: int) -> list[Row]:
    """Seconds for ours vs pycocoevalcap on the same captions; raises if they disagree."""
    refs, cands = make_captions(n_images, n_refs, seed)
    t0 = time.perf_counter()
    ours = score(refs, cands, meteor=False)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = coco_score(refs, cands)
    t_coco = time.perf_counter() - t0
    for name, value in theirs.items():
        if abs(ours[name] - value) > 1e-6:
            raise AssertionError(f"{name}: ours {ours[name]!r} != pycocoevalcap {value!r}")
    print("scores agree to 1e-6:", {k: round(float(v), 4) for k, v in theirs.items()})
    return [
        Row("pycocoevalcap PTBTokenizer+Bleu+Rouge+Cider", t_coco),
        Row("pixtell score(meteor=False)", t_ours, t_coco / t_ours),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--refs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--only",
        choices=("all", "scoring", "beam", "cache"),
        default="all",
        help="all: scoring, beam search and the feature cache side by side in one process",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads for beam and cache")
    args = p.parse_args()
    console = Console()
    summary = Table(title="captioning: three speed-ups measured in one process")
    for col in ("measurement", "baseline", "pixtell", "ratio"):
        summary.add_column(col)
    if args.only in ("all", "scoring"):
        rows = bench_scoring(args.images, args.refs, args.seed)
        table = Table(title=f"caption scoring: {args.images} images x {args.refs} references")
        for col in ("method", "seconds", "ratio"):
            table.add_column(col)
        for r in rows:
            table.add_row(r.method, f"{r.seconds:.2f}", f"{r.ratio:.1f}x")
        console.print(table)
        summary.add_row(
            f"scoring {args.images}x{args.refs} (same numbers)",
            f"pycocoevalcap {rows[0].seconds:.2f} s",
            f"{rows[1].seconds:.2f} s",
            f"{rows[1].ratio:.1f}x",
        )
    if args.only in ("all", "beam", "cache"):
        import torch

        torch.set_num_threads(args.threads)
    if args.only in ("all", "beam"):
        from caption_beam import bench_beam  # bench/ is this script's folder

        r = bench_beam(64, 5, 20)
        summary.add_row(
            "beam 5, 64 images (same captions)",
            f"per image {r['per_image']:.3f} s",
            f"batched {r['batched']:.3f} s",
            f"{r['ratio']:.1f}x",
        )
    if args.only in ("all", "cache"):
        from caption_cache import bench_cache

        res = bench_cache(threads=args.threads, console=console)
        summary.add_row(
            "training step, frozen ResNet-18",
            f"recompute {res['recompute'].images_per_s:.0f} img/s",
            f"cached {res['cached'].images_per_s:.0f} img/s",
            f"{res['cached'].ratio:.1f}x",
        )
    console.print(summary)


if __name__ == "__main__":
    main()
