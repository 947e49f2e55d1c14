"""torchvision classifiers, built through torchvision's own ``weights=`` API."""

from __future__ import annotations

import urllib.error

from torch import nn
from torchvision import models as tvm

from pixtell.models.registry import WeightsUnavailableError, register

# name → (head attribute path, input size)
_CLASSIFIERS = {
    "mobilenet_v2": ("classifier", 224),
    "mobilenet_v3_small": ("classifier", 224),
    "mobilenet_v3_large": ("classifier", 224),
    "resnet18": ("fc", 224),
    "resnet34": ("fc", 224),
    "resnet50": ("fc", 224),
    "resnet101": ("fc", 224),
    "resnet152": ("fc", 224),
    "efficientnet_b0": ("classifier", 224),
    "vit_b_16": ("heads", 224),
}


def load_torchvision(name: str, pretrained: bool, **kwargs: object) -> nn.Module:
    """``torchvision.models.get_model`` with DEFAULT weights, failing offline in one sentence."""
    weights = tvm.get_model_weights(name).DEFAULT if pretrained else None
    try:
        return tvm.get_model(name, weights=weights, **kwargs)
    except (urllib.error.URLError, OSError, ConnectionError) as exc:
        raise WeightsUnavailableError(
            f"Could not download the pretrained {weights} weights for {name} ({exc}); "
            "pass --weights PATH to load a local file or --no-pretrained to train from scratch."
        ) from exc


def replace_linear(model: nn.Module, head: str, num_classes: int) -> nn.Module:
    """Swap the last ``nn.Linear`` under ``head`` for one with ``num_classes`` outputs."""
    parent = model.get_submodule(head)
    if isinstance(parent, nn.Linear):
        setattr(model, head, nn.Linear(parent.in_features, num_classes))
        return model
    idx = max(i for i, m in enumerate(parent) if isinstance(m, nn.Linear))
    parent[idx] = nn.Linear(parent[idx].in_features, num_classes)
    return model


def _make_builder(name: str, head: str):  # noqa: ANN202
    def build(num_classes: int, pretrained: bool = False, **kwargs: object) -> nn.Module:
        if not pretrained:
            return tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        return replace_linear(load_torchvision(name, True, **kwargs), head, num_classes)

    build.__name__ = f"build_{name}"
    return build


for _name, (_head, _size) in _CLASSIFIERS.items():
    register(
        _name,
        "classify",
        input_size=_size,
        head=_head,
        has_pretrained=True,
        description=f"torchvision {_name} (ImageNet weights available)",
    )(_make_builder(_name, _head))
