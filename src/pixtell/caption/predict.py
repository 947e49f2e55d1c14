"""``caption.predict``: captions (and attention heat-maps) for new images from a trained run."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from torchvision.transforms import v2

from pixtell.caption.decoding import Hypothesis, beam_search, constrained_beam_search, greedy
from pixtell.caption.vocab import PAD, SPECIALS, Vocabulary, tokenize
from pixtell.data.folders import list_images
from pixtell.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, decode_min_size, load_image
from pixtell.data.transforms import build_eval_transform
from pixtell.models import load_model
from pixtell.report import plt  # pyplot with the report's headless backend
from pixtell.runs import Run


@dataclass
class CaptionPrediction:
    """The caption of one image, or the reason it could not be read."""

    path: Path
    caption: str = ""
    error: str | None = None
    words: list[str] = field(default_factory=list)
    attention: Path | None = None  # the heat-map PNG (``attention=True``)


@dataclass
class Decoded:
    """One image through the model: its best hypothesis and the feature-map grid (H, W)."""

    hypothesis: Hypothesis
    grid: tuple[int, ...]


class Captioner:
    """A run's caption model with its vocabulary and preprocessing (``model.json``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        vocab: Vocabulary,
        meta: dict[str, Any],
        device: str = "cpu",
        max_pixels: int | None = None,
    ) -> None:
        self.model, self.vocab, self.meta = model.to(device).eval(), vocab, meta
        self.device = device
        self.max_len: int = int(meta.get("max_len", 20))
        self.max_pixels: int = max_pixels or meta.get("max_pixels") or DEFAULT_MAX_PIXELS
        size = int(meta["img_size"])
        self.min_size = decode_min_size(size)
        self.transform = build_eval_transform(size, mean=meta["mean"], std=meta["std"])
        # what the model sees, before normalisation: the picture heat-maps are drawn over
        self.view = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])

    @classmethod
    def from_run(
        cls, run: str | Path | Run, device: str | None = None, max_pixels: int | None = None
    ) -> Captioner:
        """Load ``best.safetensors`` + ``model.json`` + the ``vocab.json`` it names."""
        model, meta = load_model(run)
        if meta.get("task") != "caption":
            raise ValueError(
                f"{run} holds a {meta.get('task')} model, not a captioner; "
                f"use `pixtell {meta.get('task')}` commands with it"
            )
        run_dir = Run.load(run).dir
        vocab = Vocabulary.load(run_dir / meta.get("vocab", "vocab.json"))
        if len(vocab) != meta["num_classes"]:
            raise ValueError(
                f"{run_dir}: vocab.json has {len(vocab)} words, the model {meta['num_classes']}"
            )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, vocab, meta, device, max_pixels)

    @property
    def has_attention(self) -> bool:
        """Whether the model attends over a feature map (Show, Attend and Tell)."""
        return self.meta["arch"] != "show_tell"

    def load(self, path: Path) -> torch.Tensor:
        """One image as the model's input (raises ``ImageLoadError``)."""
        # the same scaled JPEG decoding as training (``decode_min_size``)
        image = load_image(path, max_pixels=self.max_pixels, min_size=self.min_size)
        return self.transform(image)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of inputs (B, 3, H, W) → the features the decoder reads."""
        return self.model.encode(images.to(self.device))

    def constraint_ids(self, phrases: Sequence[str]) -> list[list[int]]:
        """Word phrases (a label and its synonyms) → id sequences for ``decode(constraints=)``.

        A phrase with a word outside the vocabulary (or a special token, or no word at all)
        can never be generated: it is dropped with a ``RuntimeWarning`` naming the words.
        """
        ids: list[list[int]] = []
        for phrase in phrases:
            words = tokenize(phrase)
            # <unk> and the other special tokens are never a word to force
            unknown = [w for w in words if self.vocab.stoi.get(w, 0) < len(SPECIALS)]
            if not words or unknown:
                why = f"unknown words {unknown}" if unknown else "no words"
                warnings.warn(f"constraint {phrase!r} dropped: {why}", RuntimeWarning, 2)
                continue
            ids.append([self.vocab.stoi[w] for w in words])
        return ids

    @torch.inference_mode()
    def decode(
        self,
        feats: torch.Tensor,
        *,
        beam_size: int = 5,
        return_alphas: bool = False,
        constraints: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> list[Decoded]:
        """Best caption per image of a batch of features; beam 1 is greedy.

        ``constraints[i]``: alternative id sequences (``constraint_ids``) of which image ``i``'s
        caption must contain one (an empty list: none); decoded by constrained beam search.
        """
        if constraints is not None and any(constraints):
            hyps = [
                h[0]
                for h in constrained_beam_search(
                    self.model,
                    feats,
                    constraints,
                    beam_size=beam_size,
                    max_len=self.max_len,
                    return_alphas=return_alphas,
                )
            ]
        elif beam_size <= 1:
            hyps = greedy(self.model, feats, self.max_len, return_alphas=return_alphas)
        else:
            hyps = [
                h[0]
                for h in beam_search(
                    self.model,
                    feats,
                    beam_size=beam_size,
                    max_len=self.max_len,
                    return_alphas=return_alphas,
                )
            ]
        grid = tuple(feats.shape[2:])
        return [Decoded(h, grid) for h in hyps]

    @torch.inference_mode()
    def nll(self, feats: torch.Tensor, references: Sequence[Sequence[str]]) -> tuple[float, int]:
        """Teacher-forced (summed negative log-likelihood, words) of every reference caption
        of each image (``references[i]`` belong to ``feats[i]``); ``<end>`` counts as a word."""
        ids = [
            torch.tensor(self.vocab.encode(r, self.max_len + 2))
            for refs in references
            for r in refs
        ]
        if not ids:
            return 0.0, 0
        rows = torch.tensor([i for i, refs in enumerate(references) for _ in refs])
        lengths = torch.tensor([len(x) for x in ids])
        captions = pad_sequence(ids, batch_first=True, padding_value=PAD).to(feats.device)
        logits, _ = self.model(feats[rows.to(feats.device)], captions, lengths)
        targets = captions[:, 1:]
        total = F.cross_entropy(
            logits.transpose(1, 2).float(), targets, ignore_index=PAD, reduction="sum"
        )
        return float(total), int((targets != PAD).sum())

    def iter_batches(
        self, paths: Sequence[Path], batch_size: int = 32
    ) -> Iterator[tuple[list[int], torch.Tensor | None, dict[int, str]]]:
        """(indices of the readable images, their inputs, {index: reason} of the others)."""
        for start in range(0, len(paths), batch_size):
            good: list[int] = []
            inputs: list[torch.Tensor] = []
            failed: dict[int, str] = {}
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    inputs.append(self.load(paths[i]))
                    good.append(i)
                except ImageLoadError as exc:
                    failed[i] = exc.reason
            yield good, torch.stack(inputs) if inputs else None, failed

    def iter_decoded(
        self,
        paths: Sequence[Path],
        *,
        beam_size: int = 5,
        batch_size: int = 32,
        return_alphas: bool = False,
        constraints: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> Iterator[tuple[int, Decoded | str]]:
        """(index, decoded) per path in order, or (index, reason) for unreadable files;
        ``constraints[i]`` belong to ``paths[i]`` (see ``decode``)."""
        if constraints is not None and len(constraints) != len(paths):
            raise ValueError(f"{len(constraints)} constraint lists for {len(paths)} images")
        for good, inputs, failed in self.iter_batches(paths, batch_size):
            done: dict[int, Decoded] = {}
            if inputs is not None:
                decoded = self.decode(
                    self.encode(inputs),
                    beam_size=beam_size,
                    return_alphas=return_alphas,
                    constraints=None if constraints is None else [constraints[i] for i in good],
                )
                done = dict(zip(good, decoded, strict=True))
            for i in sorted([*good, *failed]):
                yield i, failed[i] if i in failed else done[i]


def _free_name(folder: Path, stem: str) -> Path:
    """``folder/stem.png``, numbered when taken: an existing file is never overwritten."""
    path, n = folder / f"{stem}.png", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.png"
    return path


def plot_attention(
    image: Image.Image, words: Sequence[str], alphas: torch.Tensor, grid: Sequence[int], out: Path
) -> Path:
    """One panel per generated word: where the model looked (α over the grid) on the image."""
    h, w = int(grid[0]), int(grid[1])
    n = len(words) + 1
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    pic = np.asarray(image)
    extent = (0, pic.shape[1], pic.shape[0], 0)
    axes.flat[0].imshow(pic, extent=extent)
    axes.flat[0].set_title("image", fontsize=9)
    maps = alphas.detach().float().cpu().reshape(len(words), h, w).numpy()
    for ax, word, a in zip(axes.flat[1:], words, maps, strict=False):
        ax.imshow(pic, extent=extent)
        ax.imshow(a, cmap="jet", alpha=0.55, extent=extent, interpolation="bilinear")
        ax.set_title(word, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def predict(
    run: str | Path | Run,
    images: str | Path | Sequence[str | Path],
    *,
    beam_size: int = 5,
    attention: bool = False,
    out: str | Path | None = None,
    batch_size: int = 32,
    recursive: bool = False,
    max_pixels: int | None = None,
    backend: str = "torch",
) -> list[CaptionPrediction]:
    """Caption images (files or folders); unreadable or missing files carry ``error``.

    ``attention`` writes one PNG per image into ``out`` (default ``RUN/attention/``) with a
    heat-map panel per word; existing files there are never overwritten.
    """
    if beam_size < 1:
        raise ValueError(f"--beam-size must be at least 1 (got {beam_size})")
    from pixtell.caption.blip import is_blip_run, predict_blip  # blip.py imports this package

    if is_blip_run(run):  # a fine-tuned BLIP (``caption train --model blip``)
        if attention or backend != "torch":
            raise ValueError("a BLIP run has no --attention maps and runs on --backend torch only")
        got = predict_blip(
            run, images, beam_size=beam_size, recursive=recursive, max_pixels=max_pixels
        )
        return [CaptionPrediction(g.path, g.caption, g.error) for g in got]
    if backend == "torch":
        cap = Captioner.from_run(run, max_pixels=max_pixels)
    else:  # the exported encoder and decoder step (``pixtell export``) on onnxruntime
        from pixtell.export import load_captioner

        cap = load_captioner(run, backend, max_pixels=max_pixels)
    if attention and not cap.has_attention:
        raise ValueError(
            f"{cap.meta['arch']} has no attention to show; --attention needs a show_attend_tell run"
        )
    listing = list_images(
        [images] if isinstance(images, str | Path) else list(images), recursive=recursive
    )
    paths = listing.paths + listing.missing
    folder = Path(out) if out is not None else Run.load(run).dir / "attention"
    results: list[CaptionPrediction] = []
    for i, got in cap.iter_decoded(
        paths, beam_size=beam_size, batch_size=batch_size, return_alphas=attention
    ):
        if isinstance(got, str):
            results.append(CaptionPrediction(paths[i], error=got))
            continue
        words = [cap.vocab.itos[t] for t in got.hypothesis.tokens]
        # <unk> keeps its heat-map panel but is left out of the caption, as in scoring
        pred = CaptionPrediction(paths[i], cap.vocab.decode(got.hypothesis.tokens), words=words)
        if attention and got.hypothesis.alphas is not None:
            folder.mkdir(parents=True, exist_ok=True)
            view = cap.view(load_image(paths[i], max_pixels=cap.max_pixels))
            pred.attention = plot_attention(
                view, words, got.hypothesis.alphas, got.grid, _free_name(folder, paths[i].stem)
            )
        results.append(pred)
    return results
