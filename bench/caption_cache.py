"""Benchmark: captioning training steps with cached encoder features vs recomputing the encoder.

Generates demo caption scenes, then times teacher-forced training steps of an LSTM decoder
(Show and Tell: image feature as the first input, packed sequences, cross-entropy, Adam)
fed either by a frozen ResNet-18 recomputed on every batch (decode, resize, encode) or by
its features read from a ``FeatureCache``. Both go through ``CaptionDataModule`` in this
one process, one after the other; the first batch of each is a warm-up and not timed.

    python bench/caption_cache.py --n-images 256 --batch-size 32 --steps 10
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torchvision.models import resnet18

from pixtell.caption.data import (
    CaptionDataModule,
    build_vocabulary,
    load_captions,
    split_captions,
)
from pixtell.data.demo import make_caption_scenes
from pixtell.data.features import FeatureCache, encoder_key, state_dict_digest
from pixtell.data.transforms import build_eval_transform


@dataclass
class Result:
    """One pipeline's measurement."""

    name: str
    images: int
    seconds: float
    images_per_s: float
    ratio: float = 1.0


class Decoder(nn.Module):
    """A small CNN-LSTM decoder: the projected image feature is the LSTM's first input."""

    def __init__(self, feat_dim: int, vocab_size: int, embed: int = 256, hidden: int = 512):
        super().__init__()
        self.project = nn.Linear(feat_dim, embed)
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def loss(self, feats: torch.Tensor, caps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of predicting caps[1:] from (image, caps[:-1])."""
        inputs = torch.cat([self.project(feats).unsqueeze(1), self.embed(caps[:, :-1])], dim=1)
        packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        hidden, _ = self.lstm(packed)
        targets = pack_padded_sequence(caps, lengths.cpu(), batch_first=True, enforce_sorted=False)
        return nn.functional.cross_entropy(self.out(hidden.data), targets.data)


def frozen_resnet18() -> nn.Module:
    """ResNet-18 (random weights, no download) up to global pooling: 512-d features."""
    net = resnet18(weights=None)
    net.fc = nn.Identity()
    return net.eval().requires_grad_(False)


def time_steps(
    dm: CaptionDataModule,
    decoder: Decoder,
    encoder: nn.Module | None,
    steps: int,
    name: str,
) -> Result:
    """Images/s over ``steps`` training steps after one warm-up step."""
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    images, start, done = 0, 0.0, -1
    loader = dm.train_dataloader()  # built once, as Lightning does
    while done < steps:
        for x, caps, lengths in loader:
            if encoder is not None:
                with torch.no_grad():
                    x = encoder(x)
            loss = decoder.loss(x, caps, lengths)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == 0:  # warm-up step: allocator, first decode
                start = time.perf_counter()
            else:
                images += x.shape[0]
            if done >= steps:
                break
    seconds = time.perf_counter() - start
    return Result(name, images, seconds, images / seconds if seconds > 0 else 0.0)


def bench_cache(
    *,
    n_images: int = 256,
    data_size: int = 64,
    img_size: int = 224,
    batch_size: int = 32,
    steps: int = 10,
    seed: int = 0,
    threads: int | None = None,
    console: Console | None = None,
) -> dict[str, Result]:
    """Cached vs recomputed encoder throughput (plus the one-off cost of filling the cache).

    ``threads`` sets torch's intra-op threads for both pipelines (on a busy machine, fewer
    threads than cores avoids oversubscription, which slows the LSTM's many small ops most).
    """
    console = console or Console()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="pixtell-bench-") as tmp:
        root = make_caption_scenes(
            Path(tmp) / "scenes", n_images=n_images, img_size=data_size, seed=seed, progress=False
        )
        ds = load_captions(root, progress=False)
        splits = split_captions(ds, (1.0, 0.0, 0.0), seed=seed)
        vocab = build_vocabulary(ds, splits, min_word_count=1)
        encoder = frozen_resnet18()
        tf = build_eval_transform(img_size)

        def encode(images: list[Image.Image]) -> torch.Tensor:
            with torch.no_grad():
                return encoder(torch.stack([tf(im) for im in images]))

        key = encoder_key("resnet18-avgpool", state_dict_digest(encoder), img_size)
        cache = FeatureCache(key, Path(tmp) / "cache")
        paths = [im.path for im in ds.images]
        t0 = time.perf_counter()
        feats = cache.compute(paths, encode, batch_size=batch_size, progress=False)
        fill = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = cache.compute(paths, encode, batch_size=batch_size, progress=False)
        hit = time.perf_counter() - t0
        assert np.array_equal(feats, again)

        common = dict(batch_size=batch_size, num_workers=0, seed=seed)
        cached_dm = CaptionDataModule(ds, splits, vocab, features=feats, **common)
        image_dm = CaptionDataModule(ds, splits, vocab, tf, tf, **common)
        results = {
            "recompute": time_steps(
                image_dm, Decoder(512, len(vocab)), encoder, steps, "recompute encoder"
            ),
            "cached": time_steps(cached_dm, Decoder(512, len(vocab)), None, steps, "cached"),
        }
        base = results["recompute"].images_per_s
        for r in results.values():
            r.ratio = r.images_per_s / base if base > 0 else 0.0
        results["fill"] = Result("fill cache (once)", n_images, fill, n_images / fill)
        results["hit"] = Result("cache hit (2nd run)", n_images, hit, n_images / hit)
        console.print(
            f"{n_images} scenes of {data_size}px -> {img_size}px, batch {batch_size}, "
            f"{steps} timed steps, {len(vocab)} words, torch threads {torch.get_num_threads()}"
        )
    return results


def table(results: dict[str, Result]) -> Table:
    """Rich table: pipeline | images/s | ratio vs recomputing."""
    t = Table(title="caption training step: frozen ResNet-18 features")
    t.add_column("pipeline")
    t.add_column("images/s", justify="right")
    t.add_column("ratio vs recompute", justify="right")
    for key in ("recompute", "cached", "fill", "hit"):
        r = results[key]
        ratio = f"{r.ratio:.1f}x" if key in ("recompute", "cached") else ""
        t.add_row(r.name, f"{r.images_per_s:,.0f}", ratio)
    return t


def main(argv: list[str] | None = None) -> None:
    """Parse options, run the benchmark and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=256)
    p.add_argument("--data-size", type=int, default=64, help="side of the generated scenes")
    p.add_argument("--img-size", type=int, default=224, help="encoder input size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per pipeline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    console = Console()
    results = bench_cache(
        **{k.replace("-", "_"): v for k, v in vars(args).items()}, console=console
    )
    console.print(table(results))


if __name__ == "__main__":
    main()
