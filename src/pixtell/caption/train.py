"""``caption.train``: the captioning recipe for the shared run flow (engine.train)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from pixtell import engine
from pixtell.caption.data import (
    CaptionDataModule,
    CaptionDataset,
    build_vocabulary,
    load_captions,
    read_split,
    split_captions,
    write_split,
)
from pixtell.caption.module import CaptionModule
from pixtell.caption.vocab import Vocabulary
from pixtell.config import CaptionTrainConfig
from pixtell.data.decoded import DecodedImages, resolve_cache_mode
from pixtell.data.features import FeatureCache, encoder_key, state_dict_digest
from pixtell.data.images import decode_min_size
from pixtell.data.transforms import build_eval_transform
from pixtell.models import get_spec
from pixtell.runs import Run

SPLIT_FILE = "split.json"
VOCAB_FILE = "vocab.json"
console = Console(highlight=False, soft_wrap=True)


@dataclass
class CaptionData:
    """A parsed dataset, its split by image and the training split's vocabulary."""

    dataset: CaptionDataset
    splits: dict[str, list[int]]
    vocab: Vocabulary


def encoder_pretrained(cfg: CaptionTrainConfig) -> bool:
    """Whether the encoder starts from ImageNet weights (never with a weights file)."""
    if cfg.weights:
        return False
    has = get_spec(cfg.encoder, "classify").has_pretrained
    return has if cfg.pretrained is None else cfg.pretrained


def fine_tune_after(cfg: CaptionTrainConfig) -> int | None:
    """First epoch the encoder trains in (None: frozen); a random encoder trains from 0."""
    if cfg.fine_tune_encoder_after is not None:
        return cfg.fine_tune_encoder_after
    return None if encoder_pretrained(cfg) or cfg.weights else 0


def model_kwargs(cfg: CaptionTrainConfig) -> dict[str, Any]:
    """The architecture arguments of the caption model (what ``model.json`` rebuilds it from)."""
    kw: dict[str, Any] = {
        "encoder": cfg.encoder,
        "embed_dim": cfg.embed_dim,
        "hidden_dim": cfg.hidden_dim,
        "dropout": cfg.dropout,
    }
    if cfg.model == "show_attend_tell":
        kw.update(attention=cfg.attention, attention_dim=cfg.attention_dim, grid=cfg.grid)
    return kw


class CaptionRecipe(engine.Recipe):
    """Images with reference captions → a captioner, best by really decoded BLEU-4."""

    task = "caption"
    config_cls = CaptionTrainConfig
    table_keys = ("train_loss", "val_loss", "val_perplexity", "val_top5", "val_bleu4")

    def __init__(self) -> None:
        self._module: CaptionModule | None = None

    # -- data ------------------------------------------------------------------------------
    def _load(self, cfg: CaptionTrainConfig) -> CaptionDataset:
        ds = load_captions(
            cfg.data,
            format=cfg.format,
            images=cfg.images,
            max_pixels=cfg.max_pixels,
            progress=cfg.progress,
        )
        for path, reason in ds.problems:
            console.print(f"[yellow]skipped[/] {path}: {reason}")
        return ds

    def prepare(self, cfg: CaptionTrainConfig) -> CaptionData:
        ds = self._load(cfg)
        fractions = (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
        splits = split_captions(ds, fractions, seed=cfg.seed)
        if not splits["train"] or not splits["val"]:
            raise ValueError(
                f"{cfg.data}: too few images to make train and validation splits "
                f"({len(ds.images)} usable images)"
            )
        vocab = build_vocabulary(ds, splits, min_word_count=cfg.min_word_count)
        return CaptionData(ds, splits, vocab)

    def save_data(self, run_dir: Path, data: CaptionData) -> None:
        write_split(run_dir / SPLIT_FILE, data.dataset, data.splits)
        data.vocab.save(run_dir / VOCAB_FILE)

    def load_data(self, run_dir: Path, cfg: CaptionTrainConfig) -> CaptionData:
        ds = self._load(cfg)
        splits = read_split(run_dir / SPLIT_FILE, ds)
        return CaptionData(ds, splits, Vocabulary.load(run_dir / VOCAB_FILE))

    def describe(self, cfg: CaptionTrainConfig, data: CaptionData) -> None:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
        after = fine_tune_after(cfg)
        enc = "frozen" if after is None else "trained" + (f" from epoch {after}" if after else "")
        console.print(
            f"[bold]pixtell[/] caption: {cfg.model} ({cfg.encoder} encoder, {enc}) on {cfg.data} "
            f"({data.dataset.format}; images: {sizes}; {data.dataset.num_captions} captions; "
            f"{len(data.vocab)} words)"
        )

    # -- model -----------------------------------------------------------------------------
    def _from_features(self, cfg: CaptionTrainConfig) -> bool:
        return cfg.cache_features and fine_tune_after(cfg) is None

    def build_module(self, cfg: CaptionTrainConfig, data: CaptionData) -> CaptionModule:
        kw = model_kwargs(cfg)
        if cfg.weights:
            kw["encoder_weights"] = str(cfg.weights)
        # settings passed as they are; the ones below are derived from several settings
        derived = {"model", "pretrained", "weights", "fine_tune_encoder_after", "encoder_lr"}
        self._module = CaptionModule(
            data.vocab.itos,
            cfg.model,
            model=kw,
            pretrained=encoder_pretrained(cfg),
            from_features=self._from_features(cfg),
            fine_tune_encoder_after=fine_tune_after(cfg),
            encoder_lr=cfg.encoder_lr or (cfg.lr / 10 if encoder_pretrained(cfg) else cfg.lr),
            decode="greedy" if cfg.beam_size == 1 else "beam",
            **self.shared_hparams(CaptionModule, cfg, exclude=derived),
        )
        return self._module

    def _img_size(self, cfg: CaptionTrainConfig) -> int:
        return cfg.img_size or get_spec(cfg.encoder, "classify").input_size

    def _transform(self, cfg: CaptionTrainConfig) -> Any:
        spec = get_spec(cfg.encoder, "classify")
        # No flips or crops: captions say "left of", and a crop can cut out a named object.
        return build_eval_transform(self._img_size(cfg), mean=spec.mean, std=spec.std)

    def _features(self, cfg: CaptionTrainConfig, data: CaptionData) -> np.ndarray:
        """The frozen encoder's features of every image, from (and into) the disk cache."""
        assert self._module is not None, "build_module comes first"
        net = self._module.net
        tf = self._transform(cfg)
        key = encoder_key(
            f"caption:{cfg.model}:{cfg.encoder}",
            state_dict_digest(net.encoder),
            self._img_size(cfg),
            grid=cfg.grid if cfg.model == "show_attend_tell" else None,
            min_size=decode_min_size(self._img_size(cfg)),
        )
        cache = FeatureCache(key, cfg.cache_dir)

        @torch.no_grad()
        def encode(images: list[Image.Image]) -> torch.Tensor:
            return net.encode(torch.stack([tf(im) for im in images]))

        was_training = net.training
        net.eval()
        try:
            paths = [im.path for im in data.dataset.images]
            feats = cache.compute(
                paths,
                encode,
                progress=cfg.progress,
                max_pixels=cfg.max_pixels,
                batch_size=32,
                min_size=decode_min_size(self._img_size(cfg)),
            )
        finally:
            net.train(was_training)
        for path, reason in cache.problems:
            console.print(f"[yellow]skipped[/] {path}: {reason}")
        return feats

    def build_datamodule(self, cfg: CaptionTrainConfig, data: CaptionData) -> CaptionDataModule:
        features = self._features(cfg, data) if self._from_features(cfg) else None
        splits = data.splits
        if features is not None:  # images unreadable since they were checked have NaN rows
            bad = set(np.flatnonzero(np.isnan(features.reshape(len(features), -1)).any(1)))
            splits = {k: [i for i in v if i not in bad] for k, v in splits.items()}
        tf = self._transform(cfg)
        size = self._img_size(cfg)
        spec = get_spec(cfg.encoder, "classify")
        pixels = None if features is not None else self._pixels(cfg, data, size)
        return CaptionDataModule(
            data.dataset,
            splits,
            data.vocab,
            tf,
            tf,
            batch_size=cfg.batch_size,
            # decoded images need no worker: a batch is a few array reads
            num_workers=0 if pixels is not None and cfg.num_workers is None else cfg.num_workers,
            seed=cfg.seed,
            max_len=cfg.max_len + 2,  # + <start> and <end>
            features=features,
            max_pixels=cfg.max_pixels,
            min_size=decode_min_size(size),
            pixels=pixels,
            normalize=(spec.mean, spec.std),
        )

    def _pixels(self, cfg: CaptionTrainConfig, data: CaptionData, size: int) -> Any:
        """The images decoded once (``--cache``), when the encoder reads pixels."""
        mode = resolve_cache_mode(cfg.cache, len(data.dataset.images), size, augment="none")
        if mode == "none":
            return None
        root = Path(cfg.cache_dir).expanduser() / "decoded" if cfg.cache_dir else None
        paths = [im.path for im in data.dataset.images]
        return DecodedImages(
            paths, size, mode=mode, root=root, max_pixels=cfg.max_pixels, progress=cfg.progress
        )

    def monitor(self, cfg: CaptionTrainConfig) -> tuple[str, str]:
        return "val_bleu4", "max"

    def model_meta(self, cfg: CaptionTrainConfig, data: CaptionData) -> dict[str, Any]:
        spec = get_spec(cfg.encoder, "classify")
        return {
            "task": "caption",
            "arch": cfg.model,
            "num_classes": len(data.vocab),
            "arch_kwargs": model_kwargs(cfg),
            "vocab": VOCAB_FILE,
            "img_size": self._img_size(cfg),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "max_len": cfg.max_len,
            "max_pixels": cfg.max_pixels,
        }

    def steps_per_epoch(self, cfg: CaptionTrainConfig, data: CaptionData) -> int:
        return max(1, len(data.splits["train"]) // cfg.batch_size)

    # -- stages ----------------------------------------------------------------------------
    def has_frozen_stage(self, cfg: CaptionTrainConfig) -> bool:
        # a frozen (or cached) encoder's parameters get no gradient, which plain DDP refuses
        return fine_tune_after(cfg) != 0

    def stage_boundary(self, cfg: CaptionTrainConfig) -> int:
        return fine_tune_after(cfg) or 0

    def stage_name(self, cfg: CaptionTrainConfig, epoch: int) -> str | None:
        after = fine_tune_after(cfg)
        if not after:
            return None
        return "encoder frozen" if epoch < after else "encoder fine-tuned"


def train(data: str | Path | None = None, **options: Any) -> Run:
    """Train a captioner on DATA (Flickr8k, COCO, Karpathy or demo); returns the ``Run``.

    Settings: defaults < ``config_file`` < ``overrides`` (see ``CaptionTrainConfig``).
    ``resume`` continues a run from its ``last.ckpt``: only ``epochs``, ``patience`` and how
    it runs may change. The run holds ``vocab.json``, which ``model.json`` names.
    ``model="blip"`` fine-tunes the pretrained BLIP named by ``blip`` (``caption/blip.py``).
    """
    from pixtell.caption.blip import BlipRecipe, wants_blip  # blip.py imports this module

    recipe = BlipRecipe() if wants_blip(options) else CaptionRecipe()
    return engine.train(recipe, data, **options)
