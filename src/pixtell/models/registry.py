"""One registry for every task: name → builder plus the metadata a model needs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pixtell.data.transforms import IMAGENET_MEAN, IMAGENET_STD

Builder = Callable[..., nn.Module]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (offline) or read."""


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model besides how to build it."""

    name: str
    task: str
    builder: Builder = field(repr=False)
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    head: str = "classifier"  # attribute path of the task head (trained first when fine-tuning)
    has_pretrained: bool = False
    description: str = ""
    needs_clip: bool = False  # forward(image, clip): also takes CLIP image embeddings


_REGISTRY: dict[tuple[str, str], ModelSpec] = {}


def register(
    name: str,
    task: str,
    *,
    input_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    head: str = "classifier",
    has_pretrained: bool = False,
    description: str = "",
    needs_clip: bool = False,
) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder(num_classes=, pretrained=, **kw)`` under ``name``."""

    def deco(builder: Builder) -> Builder:
        key = (task, name)
        if key in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered for task {task!r}")
        _REGISTRY[key] = ModelSpec(
            name,
            task,
            builder,
            input_size,
            tuple(mean),
            tuple(std),
            head,
            has_pretrained,
            description,
            needs_clip,
        )
        return builder

    return deco


def get_spec(name: str, task: str = "classify") -> ModelSpec:
    """The spec of a registered model; unknown names list the known ones."""
    try:
        return _REGISTRY[(task, name)]
    except KeyError:
        known = ", ".join(s.name for s in list_models(task))
        raise ValueError(f"unknown {task} model {name!r}; choose one of: {known}") from None


def list_models(task: str | None = None) -> list[ModelSpec]:
    """All registered models, optionally for one task, sorted by task and name."""
    specs = [s for (t, _), s in _REGISTRY.items() if task is None or t == task]
    return sorted(specs, key=lambda s: (s.task, s.name))


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def create(
    name: str,
    task: str = "classify",
    *,
    num_classes: int,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build a registered model; ``weights`` loads a local safetensors / state-dict file.

    Layers whose shape differs from the file (a new head for a different number of
    classes) keep their fresh initialisation; anything else that does not fit is an error.
    """
    spec = get_spec(name, task)
    model = spec.builder(
        num_classes=num_classes, pretrained=pretrained and weights is None, **kwargs
    )
    if weights is not None:
        load_weights_file(model, weights, keep_shape_mismatch=(spec.head,))
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a (non-pickled) torch state dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} not found; check the --weights path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or pickled file
        raise WeightsUnavailableError(
            f"cannot read weights from {path} ({exc.__class__.__name__}); pass a .safetensors "
            "file or a plain state dict saved with torch.save(model.state_dict())"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint
        state = {k.removeprefix("net."): v for k, v in state["state_dict"].items()}
    return state


def load_weights_file(
    model: nn.Module, path: str | Path, keep_shape_mismatch: Sequence[str] = ()
) -> list[str]:
    """Load ``path`` into ``model``; returns the keys left at their initial values."""
    state = read_state_dict(path)
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    bad = [k for k in skipped if not any(k.startswith(p + ".") for p in keep_shape_mismatch)]
    if bad:
        raise WeightsUnavailableError(
            f"weights in {path} do not fit this architecture (shape mismatch in {bad[:3]}); "
            "check --model"
        )
    state = {k: v for k, v in state.items() if k not in skipped}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or len(missing) > len(skipped) + 2 * len(keep_shape_mismatch):
        raise WeightsUnavailableError(
            f"weights in {path} do not match this architecture "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys); check --model"
        )
    return sorted(set(missing) | set(skipped))
