"""Frozen CLIP image/text embeddings (through ``transformers``) and the models built on them.

``load_clip("openai/clip-vit-base-patch32")`` (or a directory written by ``save_pretrained``)
gives a :class:`ClipEncoder`: projected, L2-normalised image embeddings (``projection_dim``
wide: 512 for ViT-B/32) and prompt-ensemble text embeddings. Image embeddings are cached on
disk with :class:`~pixtell.data.features.FeatureCache`, keyed by the checkpoint and a digest
of its vision weights, so a dataset is encoded once.

Registered classifiers (task ``classify``):

- ``hybrid``: MobileNetV3-Large pooled features (960) and/or the CLIP embedding (D) →
  Linear 512 → BatchNorm1d → ReLU → Dropout → classes. ``mode`` picks the input:
  ``hybrid`` (960 + D), ``cnn`` (960) or ``clip`` (D).
- ``clip_linear``: one Linear on the CLIP embedding (a linear probe; also the zero-shot
  classifier, with the class-name text embeddings as its weights).

Both take ``forward(image, clip=None)``; CLIP itself stays outside them, frozen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import models as tvm

from pixtell.data.features import FeatureCache, encoder_key, state_dict_digest
from pixtell.data.images import StrPath
from pixtell.models.registry import WeightsUnavailableError, register
from pixtell.models.torchvision_models import load_torchvision

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_TEMPLATES = ("a photo of a {}",)
CNN_DIM = 960  # MobileNetV3-Large's pooled feature width
MODES = ("hybrid", "cnn", "clip")


# -- loading ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide the load report (unused text weights when only the vision tower is loaded) and
    the per-load progress bar."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def _unavailable(name: str, local: bool, exc: Exception) -> WeightsUnavailableError:
    """The one-sentence error for a CLIP checkpoint that cannot be had."""
    hint = (
        "pass --clip DIR with a local copy, for instance one written by "
        "CLIPModel.save_pretrained(DIR) and CLIPProcessor.save_pretrained(DIR)"
    )
    if local:
        reason = " ".join(str(exc).split())[:200]
        return WeightsUnavailableError(
            f"Could not read a CLIP checkpoint from the directory {name} ({reason}); {hint}."
        )
    return WeightsUnavailableError(
        f"Could not load the CLIP checkpoint {name!r}: it is not a local directory, and the "
        f"Hugging Face Hub cannot be reached (offline?) nor holds it in its local cache; {hint}."
    )


def load_clip(name_or_dir: str, *, text: bool = True) -> ClipEncoder:
    """A frozen CLIP from a Hub name or a ``save_pretrained`` directory, in eval mode.

    ``text=False`` loads only the vision tower with its projection
    (``CLIPVisionModelWithProjection``), which is all image features need.
    Raises ``WeightsUnavailableError`` (one sentence) when the files cannot be had.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPVisionModelWithProjection

    name = str(name_or_dir)
    local = Path(name).expanduser().is_dir()
    source = str(Path(name).expanduser().resolve()) if local else name
    try:
        with _quiet_transformers():
            processor = CLIPProcessor.from_pretrained(source)
            if text:
                model = CLIPModel.from_pretrained(source)
            else:
                config = CLIPConfig.from_pretrained(source)
                vision = config.vision_config
                # a CLIPModel checkpoint keeps projection_dim at the top level; the vision
                # sub-config's own default (512) would not fit a smaller projection
                vision.projection_dim = config.projection_dim
                model = CLIPVisionModelWithProjection.from_pretrained(source, config=vision)
    except (OSError, ValueError) as exc:  # HTTP/offline errors and bad repo ids are OSErrors
        raise _unavailable(source, local, exc) from exc
    model.eval().requires_grad_(False)
    return ClipEncoder(source, model, processor)


@dataclass(eq=False)
class ClipEncoder:
    """A frozen CLIP (``CLIPModel`` or ``CLIPVisionModelWithProjection``) and its processor."""

    name: str  # the Hub name, or the resolved local directory
    model: nn.Module = field(repr=False)
    processor: Any = field(repr=False)

    @property
    def dim(self) -> int:
        """Width of the projected embeddings (``projection_dim``)."""
        return int(self.model.visual_projection.out_features)

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature, exp(logit_scale) (100 for the OpenAI checkpoints)."""
        scale = getattr(self.model, "logit_scale", None)
        if scale is None:
            raise ValueError(f"{self.name} was loaded without its text tower (text=False)")
        return float(scale.detach().exp())

    @cached_property
    def digest(self) -> str:
        """sha256 of the vision tower and projection: what image features depend on."""
        parts = nn.ModuleDict(
            {
                "vision_model": self.model.vision_model,
                "visual_projection": self.model.visual_projection,
            }
        )
        return state_dict_digest(parts)

    @cached_property
    def key(self) -> str:
        """The feature-cache key: checkpoint, weights digest and image preprocessing."""
        ip = self.processor.image_processor
        config = self.model.config
        return encoder_key(
            f"clip:{self.name}",
            self.digest,
            int(getattr(config, "vision_config", config).image_size),
            resize=_plain(getattr(ip, "size", None)),
            crop=_plain(getattr(ip, "crop_size", None)),
            mean=_plain(getattr(ip, "image_mean", None)),
            std=_plain(getattr(ip, "image_std", None)),
        )

    def cache(self, root: StrPath | None = None) -> FeatureCache:
        """The on-disk cache of this encoder's image features (``$PIXTELL_CACHE`` by default)."""
        return FeatureCache(self.key, root)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Projected, L2-normalised image embeddings [N, D] (float32, CPU)."""
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        device = self.model.visual_projection.weight.device
        pooled = self.model.vision_model(pixel_values=pixels.to(device)).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1).cpu()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected, L2-normalised text embeddings [N, D] (float32, CPU)."""
        if not hasattr(self.model, "text_model"):
            raise ValueError(f"{self.name} was loaded without its text tower (text=False)")
        tok = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, return_tensors="pt"
        )
        device = self.model.text_projection.weight.device
        out = self.model.text_model(
            input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
        )
        return F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1).cpu()

    def class_embeddings(
        self, classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
    ) -> torch.Tensor:
        """Prompt-ensemble embedding per class [C, D]: the mean of the normalised embeddings
        of every template filled with the class name, renormalised (Radford et al. 2021)."""
        templates = check_templates(templates)
        texts = [t.format(c) for c in classes for t in templates]
        emb = self.embed_texts(texts).view(len(classes), len(templates), -1).mean(1)
        return F.normalize(emb, dim=-1)

    def features(
        self,
        paths: Sequence[StrPath],
        *,
        cache_root: StrPath | None = None,
        batch_size: int = 32,
        progress: bool = True,
    ) -> tuple[np.ndarray, list[tuple[Path, str]]]:
        """Embeddings of image files [N, D] through the cache (NaN rows for unusable files),
        and the (file, reason) of those."""
        cache = self.cache(cache_root)
        feats = cache.compute(paths, self.embed_images, batch_size=batch_size, progress=progress)
        return feats, list(cache.problems)


def _plain(value: Any) -> str:
    """A processor setting as a short stable string for the cache key."""
    if value is None:
        return "none"
    if dataclasses.is_dataclass(value):  # transformers' SizeDict
        value = dataclasses.asdict(value)  # type: ignore[arg-type]
    if isinstance(value, dict):
        return ",".join(f"{k}:{_plain(v)}" for k, v in sorted(value.items()) if v is not None)
    if isinstance(value, list | tuple):
        return ",".join(f"{float(v):g}" for v in value)
    return str(value)


def check_templates(templates: Sequence[str]) -> list[str]:
    """Prompt templates, each with exactly one ``{}`` for the class name."""
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates:
        raise ValueError('give at least one prompt template, e.g. --prompts "a photo of a {}"')
    bad = [t for t in templates if t.count("{}") != 1 or re.search(r"\{[^}]", t)]
    if bad:
        raise ValueError(
            f"prompt template {bad[0]!r} must hold exactly one {{}} where the class name goes, "
            'e.g. "a photo of a {}"'
        )
    return templates


class ClipFeatureSource:
    """CLIP features of image files for a trained run: the cache under the recorded ``key``,
    loading the checkpoint only when some image is not cached yet."""

    def __init__(
        self,
        name: str,
        key: str | None = None,
        *,
        cache_root: StrPath | None = None,
        encoder: ClipEncoder | None = None,
    ) -> None:
        self.name, self.key, self.cache_root = name, key, cache_root
        self._encoder = encoder

    @property
    def encoder(self) -> ClipEncoder:
        if self._encoder is None:
            enc = load_clip(self.name, text=False)
            if self.key is not None and enc.key != self.key:
                raise ValueError(
                    f"the CLIP weights at {self.name} are not the ones this model was trained "
                    "with (their features differ); pass --clip with the original checkpoint"
                )
            self._encoder = enc
        return self._encoder

    def features(
        self, paths: Sequence[StrPath], *, batch_size: int = 32, progress: bool = True
    ) -> tuple[np.ndarray, list[tuple[Path, str]]]:
        """[N, D] embeddings (NaN rows for unusable files) and the (file, reason) of those."""
        key = self.key or self.encoder.key
        cache = FeatureCache(key, self.cache_root)
        feats = cache.compute(
            paths,
            lambda images: self.encoder.embed_images(images),
            batch_size=batch_size,
            progress=progress,
        )
        return feats, list(cache.problems)


# -- models ----------------------------------------------------------------------------------
def uses_clip(arch: str, mode: str = "hybrid") -> bool:
    """Whether a classifier takes CLIP features (``hybrid`` except mode cnn, ``clip_linear``)."""
    return arch == "clip_linear" or (arch == "hybrid" and mode != "cnn")


def uses_image(arch: str, mode: str = "hybrid") -> bool:
    """Whether a classifier looks at the pixels itself (all but the CLIP-only ones)."""
    return not (arch == "clip_linear" or (arch == "hybrid" and mode == "clip"))


def _head(in_features: int, num_classes: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class HybridClassifier(nn.Module):
    """MobileNetV3-Large pooled features and/or a CLIP embedding → MLP head.

    Feature sizes: ``hybrid`` 960 + D, ``cnn`` 960, ``clip`` D (``clip_dim``).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        mode: str = "hybrid",
        clip_dim: int = 512,
        hidden: int = 512,
        dropout: float = 0.3,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown --mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode, self.clip_dim = mode, int(clip_dim)
        if mode != "clip":
            cnn = (
                load_torchvision("mobilenet_v3_large", True)
                if pretrained
                else tvm.mobilenet_v3_large(weights=None)
            )
            self.features = cnn.features
            self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _head(self.feature_dim, num_classes, hidden, dropout)

    @property
    def feature_dim(self) -> int:
        """Width of the head's input for this mode."""
        return {"hybrid": CNN_DIM + self.clip_dim, "cnn": CNN_DIM, "clip": self.clip_dim}[self.mode]

    def embed(self, image: torch.Tensor, clip: torch.Tensor | None = None) -> torch.Tensor:
        """The head's input [B, feature_dim]."""
        parts = []
        if self.mode != "clip":
            parts.append(self.pool(self.features(image)).flatten(1))
        if self.mode != "cnn":
            if clip is None:
                raise ValueError(f"the {self.mode} mode needs CLIP features")
            parts.append(clip.to(parts[0].dtype if parts else torch.float32))
        return torch.cat(parts, 1)

    def forward(self, image: torch.Tensor, clip: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.embed(image, clip))


class ClipLinear(nn.Module):
    """A linear probe on CLIP embeddings (the image tensor is ignored)."""

    def __init__(self, num_classes: int, *, clip_dim: int = 512) -> None:
        super().__init__()
        self.clip_dim = int(clip_dim)
        self.classifier = nn.Linear(self.clip_dim, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.clip_dim

    def forward(self, image: torch.Tensor | None, clip: torch.Tensor | None = None) -> torch.Tensor:
        if clip is None:
            raise ValueError("clip_linear needs CLIP features")
        return self.classifier(clip.float())


@register(
    "hybrid",
    "classify",
    input_size=224,
    has_pretrained=True,
    needs_clip=True,
    description="MobileNetV3-Large + frozen CLIP image embedding → MLP (--mode hybrid|cnn|clip)",
)
def build_hybrid(
    num_classes: int,
    pretrained: bool = False,
    mode: str = "hybrid",
    clip_dim: int = 512,
    **kwargs: Any,
) -> nn.Module:
    return HybridClassifier(
        num_classes, mode=mode, clip_dim=clip_dim, pretrained=pretrained, **kwargs
    )


@register(
    "clip_linear",
    "classify",
    input_size=224,
    needs_clip=True,
    description="linear probe on frozen CLIP image embeddings (also the zero-shot classifier)",
)
def build_clip_linear(
    num_classes: int, pretrained: bool = False, clip_dim: int = 512, **kwargs: Any
) -> nn.Module:
    return ClipLinear(num_classes, clip_dim=clip_dim)
