"""Pretrained BLIP captions through ``transformers``: n-best beam search with an optional text
prefix, evaluation on any captions dataset, and fine-tuning on the shared run flow.

``BlipCaptioner.caption(paths, beam_size=, max_len=, prefix=, n_best=, batch_size=)`` is the
stable entry point (guided captioning builds on it). A fine-tuned run holds
``best.safetensors`` + ``model.json`` (``arch: blip``) and ``blip/``: the BLIP config and
processor files the weights are rebuilt from, so ``caption predict RUN`` / ``evaluate RUN``
need no network. ``transformers`` is imported only when a BLIP model is loaded.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import lightning as L
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from torch import nn
from torchmetrics import MeanMetric

from pixtell import engine
from pixtell.caption.data import (
    CaptionDataModule,
    CaptionImage,
    load_captions,
    read_split,
    split_captions,
    write_split,
)
from pixtell.caption.module import DecodedValidation
from pixtell.caption.train import CaptionData, CaptionRecipe
from pixtell.config import CaptionTrainConfig, read_settings_file
from pixtell.data.folders import list_images
from pixtell.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from pixtell.models.io import META_FILE, WEIGHTS_FILE
from pixtell.models.registry import WeightsUnavailableError
from pixtell.optim import ClipGradNorm, build_optimizer, optimizer_config, param_groups
from pixtell.runs import Run, new_run_dir, run_dir_holding

DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"
ARCH = "blip"
BLIP_DIR = "blip"  # in a fine-tuned run: the config + processor files model.json names
BLIP_LR = 1e-5  # BLIP's own caption fine-tuning LR (configs/caption_coco.yaml, init_lr)
IGNORE = -100  # label id the transformers losses skip
console = Console(highlight=False, soft_wrap=True)


# -- loading ---------------------------------------------------------------------------------
def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub's host answers at all (a quick TCP connect).

    Without it, an offline ``from_pretrained`` retries each file with back-off for minutes.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true"):
        return False
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _pretrained(cls: Any, name_or_dir: str | Path) -> Any:
    """``cls.from_pretrained`` of a local directory, the Hub cache, or a download;
    every failure is one ``WeightsUnavailableError`` sentence."""
    source = str(name_or_dir)
    local = Path(source).expanduser()
    if local.is_dir():
        try:
            return cls.from_pretrained(local)
        except (OSError, ValueError, KeyError) as exc:
            raise WeightsUnavailableError(
                f"{local} is not a BLIP model directory ({exc.__class__.__name__}); pass --blip "
                "DIR with a folder written by save_pretrained (config.json, weights, processor)"
            ) from exc
    try:
        return cls.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        pass  # not in the Hugging Face cache: download it
    if not _hub_reachable():
        raise WeightsUnavailableError(
            f"cannot load BLIP {source!r}: it is not a local directory and the Hugging Face Hub "
            "cannot be reached (offline?); pass a local copy with --blip DIR (a folder saved "
            "with save_pretrained)"
        )
    try:
        return cls.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise WeightsUnavailableError(
            f"cannot load BLIP {source!r} ({exc.__class__.__name__}: no such model on the "
            "Hugging Face Hub, or the download failed); pass a local copy with --blip DIR"
        ) from exc


def load_processor(name_or_dir: str | Path = DEFAULT_BLIP) -> Any:
    """The ``BlipProcessor`` (image processor + tokenizer) of a checkpoint name or folder."""
    from transformers import BlipProcessor

    return _pretrained(BlipProcessor, name_or_dir)


def load_blip(name_or_dir: str | Path = DEFAULT_BLIP) -> tuple[nn.Module, Any]:
    """``(BlipForConditionalGeneration, BlipProcessor)`` from a Hub name or a local folder."""
    from transformers import BlipForConditionalGeneration

    processor = load_processor(name_or_dir)  # the small download first: offline fails fast
    return _pretrained(BlipForConditionalGeneration, name_or_dir), processor


def _blip_meta(path: str | Path | Run) -> tuple[Path, dict[str, Any]] | None:
    """(run directory, model.json) of a fine-tuned BLIP run, else None."""
    try:
        run_dir = run_dir_holding(path.dir if isinstance(path, Run) else path, META_FILE)
        meta = json.loads((run_dir / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return (run_dir, meta) if meta.get("arch") == ARCH else None


def is_blip_run(path: str | Path | Run) -> bool:
    """Whether ``path`` is (a file in) a run directory holding a fine-tuned BLIP."""
    return _blip_meta(path) is not None


def _share_tied_weights_as_copies(model: nn.Module) -> None:
    """BLIP ties its word embeddings to the output layer; safetensors refuses tensors that
    share memory, so a state dict carries a copy of each repeat (loading fills both
    names into the one tied parameter, which stays tied)."""

    def hook(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        seen: set[tuple[int, int]] = set()
        for key, value in state.items():
            if not isinstance(value, torch.Tensor) or not key.startswith(prefix):
                continue
            if value.numel() == 0:
                continue
            ptr = (value.untyped_storage().data_ptr(), value.storage_offset())
            if ptr in seen:
                state[key] = value.detach().clone()
            seen.add(ptr)

    model.register_state_dict_post_hook(hook)


# -- decoding --------------------------------------------------------------------------------
@torch.no_grad()
def blip_generate(
    model: nn.Module,
    tokenizer: Any,
    pixel_values: torch.Tensor,
    *,
    beam_size: int = 3,
    max_len: int = 30,
    prefix: str | None = None,
    n_best: int = 1,
) -> list[list[tuple[str, float]]]:
    """Per image, up to ``n_best`` distinct lower-cased captions with their scores, best first.

    The score is the mean log-probability of the generated tokens (``<sep>`` included, the
    prefix not): transformers' beam score with length penalty 1, the same for greedy.
    ``prefix`` is a prompt BLIP continues; the captions start with it as BLIP writes it.
    """
    if beam_size < 1 or n_best < 1 or max_len < 1:
        raise ValueError("beam size, n-best and max length must be at least 1")
    if n_best > beam_size:
        raise ValueError(f"--n-best {n_best} needs --beam-size of at least {n_best}")
    n = pixel_values.shape[0]
    kwargs: dict[str, Any] = {}
    if prefix:
        # [CLS] prefix [SEP]: BLIP's generate turns [CLS] into its [DEC] token, drops [SEP]
        ids = tokenizer(prefix, return_tensors="pt")["input_ids"].to(pixel_values.device)
        kwargs["input_ids"] = ids.repeat(n, 1)
    out = model.generate(
        pixel_values=pixel_values,
        num_beams=beam_size,
        num_return_sequences=beam_size,  # every beam: text duplicates are dropped below
        max_new_tokens=max_len,
        length_penalty=1.0,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        **kwargs,
    )
    seqs = out.sequences
    prompt = seqs.shape[1] - len(out.scores)
    if beam_size > 1:
        scores = out.sequences_scores.float()
    else:
        scores = _greedy_scores(seqs[:, prompt:], out.scores, model.config.text_config)
    texts = tokenizer.batch_decode(seqs[:, 1:], skip_special_tokens=True)  # 0: [DEC]
    result: list[list[tuple[str, float]]] = []
    for i in range(n):
        rows = range(i * beam_size, (i + 1) * beam_size)
        ranked = sorted(rows, key=lambda r: -float(scores[r]))
        best: dict[str, float] = {}
        for r in ranked:
            text = " ".join(texts[r].lower().split())
            if text not in best:
                best[text] = float(scores[r])
        result.append(list(best.items())[:n_best])
    return result


def _greedy_scores(
    generated: torch.Tensor, step_logits: Sequence[torch.Tensor], text_config: Any
) -> torch.Tensor:
    """Mean log-probability of each greedy caption up to and including its first ``<sep>``."""
    logp = torch.stack([s.float().log_softmax(-1) for s in step_logits], dim=1)
    picked = logp.gather(-1, generated[..., None])[..., 0]
    ended = (generated == text_config.sep_token_id).long().cumsum(1)
    valid = (ended - (generated == text_config.sep_token_id).long()) == 0  # up to the first end
    return (picked * valid).sum(1) / valid.sum(1).clamp(min=1)


@dataclass
class BlipCaption:
    """The n-best captions of one image (best first) with their scores, or why it failed."""

    path: Path
    captions: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def caption(self) -> str:
        """The best caption ('' for an unreadable file)."""
        return self.captions[0] if self.captions else ""


class BlipPixels:
    """A PIL image → BLIP's input tensor (3, H, W), as its image processor makes it."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, image: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        return pixels if isinstance(image, Sequence) else pixels[0]


class BlipCaptioner:
    """A BLIP model with its processor: captions with n-best lists and an optional prefix."""

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        device: str | None = None,
        max_pixels: int | None = None,
        max_len: int = 30,
        name: str = DEFAULT_BLIP,
    ) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.pixels = BlipPixels(processor.image_processor)
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS
        self.max_len, self.name = max_len, name

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | Path = DEFAULT_BLIP,
        *,
        device: str | None = None,
        max_pixels: int | None = None,
    ) -> BlipCaptioner:
        """A Hub checkpoint name or a ``save_pretrained`` folder (offline: one-sentence
        ``WeightsUnavailableError``)."""
        model, processor = load_blip(name_or_dir)
        return cls(model, processor, device=device, max_pixels=max_pixels, name=str(name_or_dir))

    @classmethod
    def from_run(
        cls, run: str | Path | Run, *, device: str | None = None, max_pixels: int | None = None
    ) -> BlipCaptioner:
        """A fine-tuned run: ``blip/`` (config, processor) + ``best.safetensors``."""
        from safetensors.torch import load_file
        from transformers import BlipConfig, BlipForConditionalGeneration

        found = _blip_meta(run)
        if found is None:
            raise ValueError(f"{run} is not a fine-tuned BLIP run (model.json arch is not blip)")
        run_dir, meta = found
        folder = run_dir / meta.get("blip", BLIP_DIR)
        model = BlipForConditionalGeneration(_pretrained(BlipConfig, folder))
        model.load_state_dict(load_file(run_dir / WEIGHTS_FILE))
        return cls(
            model,
            load_processor(folder),
            device=device,
            max_pixels=max_pixels or meta.get("max_pixels"),
            max_len=int(meta.get("max_len", 30)),
            name=str(run_dir),
        )

    @classmethod
    def load(
        cls, source: str | Path | Run, *, device: str | None = None, max_pixels: int | None = None
    ) -> BlipCaptioner:
        """A fine-tuned BLIP run, else a checkpoint name or folder."""
        if is_blip_run(source):
            return cls.from_run(source, device=device, max_pixels=max_pixels)
        return cls.from_pretrained(str(source), device=device, max_pixels=max_pixels)

    def generate(
        self,
        images: Sequence[Image.Image],
        *,
        beam_size: int = 3,
        max_len: int | None = None,
        prefix: str | None = None,
        n_best: int = 1,
    ) -> list[list[tuple[str, float]]]:
        """``blip_generate`` on already loaded images."""
        pixels = self.pixels(list(images)).to(self.device)
        return blip_generate(
            self.model,
            self.tokenizer,
            pixels,
            beam_size=beam_size,
            max_len=max_len or self.max_len,
            prefix=prefix,
            n_best=n_best,
        )

    def caption(
        self,
        paths: Sequence[str | Path],
        *,
        beam_size: int = 3,
        max_len: int | None = None,
        prefix: str | Sequence[str | None] | None = None,
        n_best: int = 1,
        batch_size: int = 8,
    ) -> list[BlipCaption]:
        """One ``BlipCaption`` per path, in order; unreadable files carry ``error``.

        ``prefix``: one prompt for every image, or one per image (None: no prompt); the
        captions include it, lower-cased as BLIP writes it.
        """
        if n_best > beam_size:
            raise ValueError(f"--n-best {n_best} needs --beam-size of at least {n_best}")
        paths = [Path(p) for p in paths]
        prefixes = [prefix] * len(paths) if prefix is None or isinstance(prefix, str) else prefix
        if len(prefixes) != len(paths):
            raise ValueError(f"{len(prefixes)} prefixes for {len(paths)} images")
        results = [BlipCaption(p) for p in paths]
        for start in range(0, len(paths), max(1, batch_size)):
            loaded: dict[str | None, list[tuple[int, Image.Image]]] = {}
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    image = load_image(paths[i], max_pixels=self.max_pixels)
                except ImageLoadError as exc:
                    results[i].error = exc.reason
                    continue
                loaded.setdefault(prefixes[i] or None, []).append((i, image))
            for pre, items in loaded.items():  # one prompt per generate call
                got = self.generate(
                    [im for _, im in items],
                    beam_size=beam_size,
                    max_len=max_len,
                    prefix=pre,
                    n_best=n_best,
                )
                for (i, _), nbest in zip(items, got, strict=True):
                    results[i].captions = [c for c, _ in nbest]
                    results[i].scores = [s for _, s in nbest]
        return results


def predict_blip(
    source: str | Path | Run,
    images: str | Path | Sequence[str | Path],
    *,
    beam_size: int = 3,
    max_len: int | None = None,
    prefix: str | None = None,
    n_best: int = 1,
    batch_size: int = 8,
    recursive: bool = False,
    max_pixels: int | None = None,
) -> list[BlipCaption]:
    """Caption image files and folders with BLIP (a checkpoint name, folder or fine-tuned run)."""
    if n_best > beam_size:
        raise ValueError(f"--n-best {n_best} needs --beam-size of at least {n_best}")
    cap = BlipCaptioner.load(source, max_pixels=max_pixels)
    listing = list_images(
        [images] if isinstance(images, str | Path) else list(images), recursive=recursive
    )
    return cap.caption(
        listing.paths + listing.missing,
        beam_size=beam_size,
        max_len=max_len,
        prefix=prefix,
        n_best=n_best,
        batch_size=batch_size,
    )


# -- evaluation ------------------------------------------------------------------------------
def _data_images(
    data: str | Path, split: str, format: str | None, images: str | Path | None, max_pixels: int
) -> tuple[list[CaptionImage], list[tuple[str, str]]]:
    """A dataset's ``split`` (its own, else the split a default ``caption train`` makes:
    same seed and fractions) or ``all`` of it, with the problems found while reading it."""
    ds = load_captions(
        data,
        format=format,
        images=images,
        check_images=False,  # decoding reports unreadable files
        max_pixels=max_pixels,
        progress=False,
    )
    problems = [(str(p), r) for p, r in ds.problems]
    if split == "all":
        return ds.images, problems
    fields = CaptionTrainConfig.model_fields
    val, test = fields["val_fraction"].default, fields["test_fraction"].default
    splits = split_captions(ds, (1 - val - test, val, test), seed=fields["seed"].default)
    if split not in splits:
        raise ValueError(f"unknown split {split!r}: use test, val, train or all")
    if not splits[split]:
        raise ValueError(f"{data} has no {split} images; try --split all")
    return [ds.images[i] for i in splits[split]], problems


def evaluate_blip(
    source: str | Path | Run = DEFAULT_BLIP,
    data: str | Path | None = None,
    *,
    split: str = "test",
    beam_size: int = 3,
    max_len: int | None = None,
    prefix: str | None = None,
    out: str | Path | None = None,
    batch_size: int = 8,
    max_pixels: int | None = None,
    meteor: bool | None = None,
    format: str | None = None,
    images: str | Path | None = None,
) -> Any:
    """Score BLIP captions (a checkpoint, or a fine-tuned run) against every reference.

    ``data``: a captions dataset and its ``split`` (``all``: every image); without it, a
    fine-tuned run's own split. Writes what ``caption.evaluate`` writes (``metrics.json``,
    ``predictions.json``, ``per_image.csv``, ``examples.html``, ``report.html``; no
    perplexity: BLIP's word pieces are not our words) into ``out``, by default ``RUN/eval``
    for a run and a new ``runs/caption/<checkpoint>-eval`` otherwise. Returns an
    ``EvalResult``.
    """
    from pixtell.caption.evaluate import (
        METRIC_NAMES,
        METRICS_FILE,
        PER_IMAGE_FILE,
        PREDICTIONS_FILE,
        EvalResult,
        _coco_id,
        _eval_report,
        _examples_page,
        _split_images,
        _write_per_image,
    )
    from pixtell.metrics.caption import per_image_scores, score
    from pixtell.report import Section, write_report

    if beam_size < 1:
        raise ValueError(f"--beam-size must be at least 1 (got {beam_size})")
    run = Run.load(source) if is_blip_run(source) else None
    if run is None and data is None:
        raise ValueError("give --data DATA (a captions dataset) to evaluate a pretrained BLIP")
    cap = BlipCaptioner.load(run or source, max_pixels=max_pixels)  # fails before any folder
    if data is not None:
        todo, skipped = _data_images(data, split, format, images, cap.max_pixels)
    else:
        assert run is not None
        todo, skipped = _split_images(run, split, cap.max_pixels)
    if out is not None:
        out_dir = Path(out)
    elif run is not None:
        out_dir = run.dir / ("eval" if split == "test" else f"eval-{split}")
    else:
        stem = re.sub(r"[^\w.\-]", "_", Path(str(source)).name) or "blip"
        out_dir = new_run_dir(Path("runs"), "caption", f"{stem}-eval")
    out_dir.mkdir(parents=True, exist_ok=True)

    got = cap.caption(
        [im.path for im in todo],
        beam_size=beam_size,
        max_len=max_len,
        prefix=prefix,
        batch_size=batch_size,
    )
    candidates = {i: g.caption for i, g in enumerate(got) if g.error is None}
    skipped += [(str(g.path), g.error) for g in got if g.error is not None]
    if not candidates:
        raise ValueError(f"no readable image among the {len(todo)} to evaluate")
    ids = sorted(candidates)
    refs = {i: todo[i].captions for i in ids}
    metrics: dict[str, Any] = score(refs, candidates, meteor=meteor, nist=True)
    metrics.update(
        n=len(ids), split=split, beam_size=beam_size, model=cap.name, prefix=prefix or ""
    )
    metrics["skipped"] = skipped
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    results = [{"image_id": _coco_id(todo[i].image_id), "caption": candidates[i]} for i in ids]
    (out_dir / PREDICTIONS_FILE).write_text(json.dumps(results, indent=1, ensure_ascii=False))
    per_image = per_image_scores(refs, candidates)
    _write_per_image(out_dir / PER_IMAGE_FILE, todo, candidates, per_image)
    examples = _examples_page(out_dir, run or Run(out_dir), todo, candidates, per_image)
    if run is not None and data is None:
        report = _eval_report(run, out_dir, metrics, examples)
    else:
        table = {METRIC_NAMES.get(k, k): v for k, v in metrics.items() if k in METRIC_NAMES}
        where = f"{data} ({split})" if data is not None else split
        sections = [
            Section("Model", table={"BLIP": cap.name, "data": where, "prefix": prefix or "none"}),
            Section(
                f"Evaluation (beam {beam_size})",
                table=table,
                text="BLIP captions scored against all references of each image (BLEU, METEOR, "
                "ROUGE-L and CIDEr-D as the COCO caption toolkit).",
            ),
            Section(
                "Best and worst images",
                images=[p for p in (out_dir / "best.png", out_dir / "worst.png") if p.is_file()],
                links=[examples],
            ),
            Section(
                "Files",
                links=[out_dir / n for n in (METRICS_FILE, PREDICTIONS_FILE, PER_IMAGE_FILE)],
            ),
        ]
        if skipped:
            sections.append(Section("Skipped files", rows=[["file", "reason"], *skipped]))
        report = write_report(out_dir / "report.html", f"pixtell caption: {cap.name}", sections)
    console.print(
        f"BLEU-4 {metrics['Bleu_4']:.4f}  CIDEr {metrics['CIDEr']:.4f} on {len(ids)} images "
        f"(BLIP, beam {beam_size}) → {report}"
    )
    return EvalResult(out_dir, metrics, report)


# -- fine-tuning -----------------------------------------------------------------------------
class BlipTokens:
    """``Vocabulary.encode`` as the caption datasets call it, with BLIP's tokenizer:
    ``[CLS] words [SEP]`` ids, so ``CaptionDataModule`` serves BLIP unchanged."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, caption: str, max_len: int | None = None) -> list[int]:
        """Token ids of ``caption`` (at most ``max_len``)."""
        return self.tokenizer(caption, truncation=max_len is not None, max_length=max_len)[
            "input_ids"
        ]

    def __len__(self) -> int:
        return len(self.tokenizer)


class BlipModule(ClipGradNorm, DecodedValidation, L.LightningModule):
    """Fine-tunes a ``BlipForConditionalGeneration`` (``self.net``) on (image, caption) pairs.

    Teacher-forced cross-entropy of the text decoder (transformers' own loss) on one caption
    per image per epoch; the vision encoder is frozen unless ``fine_tune_encoder_after`` is
    set (then it trains from that epoch at ``encoder_lr``). Validation: ``val_loss`` on every
    reference and ``val_bleu4`` / ``val_cider`` of captions really decoded by beam search.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        optimizer: str = "adamw",
        lr: float = BLIP_LR,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        warmup_epochs: float = 0.0,
        step_size: int = 10,
        gamma: float = 0.1,
        epochs: int = 10,
        fine_tune_encoder_after: int | None = None,
        encoder_lr: float | None = None,
        grad_clip: float = 5.0,
        beam_size: int = 3,
        max_len: int = 20,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "processor"])
        self.net = model
        _share_tied_weights_as_copies(self.net)
        self.tokenizer = processor.tokenizer
        self.text_config = model.config.text_config
        self.val_loss = MeanMetric()
        self.val_references: list[list[str]] | None = None
        self._candidates: dict[int, str] = {}
        self.on_train_epoch_start()

    def vision_trainable(self) -> bool:
        """True from epoch ``fine_tune_encoder_after`` on."""
        after = self.hparams.fine_tune_encoder_after
        return after is not None and (self._trainer is None or self.current_epoch >= after)

    def train(self, mode: bool = True) -> BlipModule:
        super().train(mode)
        if mode and not self.vision_trainable():
            self.net.vision_model.eval()
        return self

    def on_train_epoch_start(self) -> None:
        trainable = self.vision_trainable()
        for p in self.net.vision_model.parameters():
            p.requires_grad_(trainable)
        self.train(self.training)

    def _decoder_inputs(
        self, ids: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] …`` ids → ``[DEC] …`` (the start token BLIP generates from) and the mask."""
        mask = torch.arange(ids.shape[1], device=ids.device)[None] < lengths.to(ids.device)[:, None]
        ids = ids.masked_fill(~mask, self.text_config.pad_token_id)
        ids[:, 0] = self.text_config.bos_token_id
        return ids, mask.long()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        pixels, ids, lengths = batch
        input_ids, mask = self._decoder_inputs(ids, lengths)
        labels = input_ids.masked_fill(mask == 0, IGNORE)
        out = self.net(pixel_values=pixels, input_ids=input_ids, attention_mask=mask, labels=labels)
        self.log("train_loss", out.loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        return out.loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pixels, index = batch
        hp = self.hparams
        if self.val_references is not None:  # teacher-forced loss on every reference
            refs = [self.val_references[int(i)] for i in index]
            rows = torch.tensor([r for r, caps in enumerate(refs) for _ in caps])
            enc = self.tokenizer(
                [c for caps in refs for c in caps],
                padding=True,
                truncation=True,
                max_length=hp.max_len + 2,
                return_tensors="pt",
            ).to(self.device)
            lengths = enc["attention_mask"].sum(1)
            input_ids, mask = self._decoder_inputs(enc["input_ids"], lengths)
            embeds = self.net.vision_model(pixel_values=pixels).last_hidden_state
            logits = self.net.text_decoder(
                input_ids=input_ids,
                attention_mask=mask,
                encoder_hidden_states=embeds[rows.to(self.device)],
            ).logits
            targets = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE)
            loss = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets)
            self.val_loss.update(loss, weight=(targets != IGNORE).sum())
            self.log("val_loss", self.val_loss, prog_bar=True)
        nbest = blip_generate(
            self.net, self.tokenizer, pixels, beam_size=hp.beam_size, max_len=hp.max_len
        )
        for i, caps in zip(index.tolist(), nbest, strict=True):
            self._candidates[int(i)] = caps[0][0]

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        opt = build_optimizer(self.net.text_decoder, hp.optimizer, hp.lr, hp.weight_decay)
        if hp.fine_tune_encoder_after is not None:
            lr = hp.encoder_lr or hp.lr / 10
            for group in param_groups(self.net.vision_model, hp.weight_decay):
                opt.add_param_group({**group, "lr": lr})
        return optimizer_config(opt, self.trainer, hp, monitor="val_bleu4", mode="max")


def wants_blip(options: dict[str, Any]) -> bool:
    """Whether ``caption.train(**options)`` trains BLIP: ``model`` given, else in the
    ``config_file``, else recorded in the run being resumed (or joined by a DDP worker)."""
    model = options.get("model")
    if model is None and options.get("config_file") is not None:
        model = read_settings_file(Path(options["config_file"])).get("model")
    resume = options.get("resume") or os.environ.get(engine.RUN_DIR_ENV)
    if model is None and resume:
        model = Run.load(resume).config.get("model")
    return model == ARCH


class BlipRecipe(CaptionRecipe):
    """``caption train --model blip``: BLIP fine-tuned on any captions dataset, best by really
    decoded BLEU-4, exported with its config and processor in ``RUN/blip/``."""

    table_keys = ("train_loss", "val_loss", "val_bleu4")

    def __init__(self) -> None:
        super().__init__()
        self._processor: Any = None
        self._source: str | Path | None = None  # a resumed run's own blip/ folder

    def _get_processor(self, source: str | Path) -> Any:
        if self._processor is None:
            self._processor = load_processor(source)
        return self._processor

    def prepare(self, cfg: CaptionTrainConfig) -> CaptionData:
        processor = self._get_processor(cfg.blip)  # offline fails here, before reading data
        if "lr" not in cfg.model_fields_set:
            cfg.lr = BLIP_LR  # a captioner-from-scratch LR would wreck BLIP; recorded as used
        data = super().prepare(cfg)
        data.vocab = BlipTokens(processor.tokenizer)  # type: ignore[assignment]
        return data

    def save_data(self, run_dir: Path, data: CaptionData) -> None:
        write_split(run_dir / "split.json", data.dataset, data.splits)
        assert self._module is not None, "build_module comes first"
        folder = run_dir / BLIP_DIR
        self._module.net.config.save_pretrained(folder)
        self._module.net.generation_config.save_pretrained(folder)
        self._processor.save_pretrained(folder)

    def load_data(self, run_dir: Path, cfg: CaptionTrainConfig) -> CaptionData:
        self._source = run_dir / BLIP_DIR  # resume offline: the weights come from last.ckpt
        processor = self._get_processor(self._source)
        ds = self._load(cfg)
        splits = read_split(run_dir / "split.json", ds)
        return CaptionData(ds, splits, BlipTokens(processor.tokenizer))  # type: ignore[arg-type]

    def describe(self, cfg: CaptionTrainConfig, data: CaptionData) -> None:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
        after = cfg.fine_tune_encoder_after
        vision = (
            "frozen" if after is None else "trained" + (f" from epoch {after}" if after else "")
        )
        console.print(
            f"[bold]pixtell[/] caption: BLIP {cfg.blip} (vision encoder {vision}, lr {cfg.lr:g}) "
            f"fine-tuned on {cfg.data} ({data.dataset.format}; images: {sizes}; "
            f"{data.dataset.num_captions} captions)"
        )

    def build_module(self, cfg: CaptionTrainConfig, data: CaptionData) -> BlipModule:
        if self._source is not None:
            from transformers import BlipConfig, BlipForConditionalGeneration

            model = BlipForConditionalGeneration(_pretrained(BlipConfig, self._source))
            processor = self._get_processor(self._source)
        else:
            model, processor = load_blip(cfg.blip)
        self._processor = processor
        self._module = BlipModule(  # type: ignore[assignment]
            model, processor, **self.shared_hparams(BlipModule, cfg, exclude={"model"})
        )
        return self._module  # type: ignore[return-value]

    def build_datamodule(self, cfg: CaptionTrainConfig, data: CaptionData) -> CaptionDataModule:
        pixels = BlipPixels(self._processor.image_processor)
        return CaptionDataModule(
            data.dataset,
            data.splits,
            data.vocab,
            pixels,
            pixels,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            seed=cfg.seed,
            max_len=cfg.max_len + 2,  # + [CLS] and [SEP]
            max_pixels=cfg.max_pixels,
        )

    def model_meta(self, cfg: CaptionTrainConfig, data: CaptionData) -> dict[str, Any]:
        return {
            "task": "caption",
            "arch": ARCH,
            "blip": BLIP_DIR,
            "source": str(cfg.blip),
            "max_len": cfg.max_len,
            "max_pixels": cfg.max_pixels,
        }

    def has_frozen_stage(self, cfg: CaptionTrainConfig) -> bool:
        return cfg.fine_tune_encoder_after != 0

    def stage_boundary(self, cfg: CaptionTrainConfig) -> int:
        return cfg.fine_tune_encoder_after or 0

    def stage_name(self, cfg: CaptionTrainConfig, epoch: int) -> str | None:
        after = cfg.fine_tune_encoder_after
        if not after:
            return None
        return "vision frozen" if epoch < after else "vision fine-tuned"
