"""Spatial feature extractors for captioning, cut generically out of any registered classifier.

``build_encoder("resnet50")`` returns the network up to its last spatial feature map
(B, C, H, W) — 7×7 at 224 px for a ResNet — and C. The cut point is found by tracing the
classifier with torchvision's FX feature extraction and taking the last node whose output
is still a spatial map (H·W > 1 on a probe image): that is the map the model pools before
its head, whatever the architecture, so no per-model table is needed.

``small_cnn`` is a from-scratch classifier sized for the 64 px demo scenes on a CPU (an
8×8 grid at 64 px); it is registered with the classifiers so it can also be trained alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from pixtell.models.registry import create, get_spec, register

_PROBE_SIZE = 128  # big enough that every stride-32 backbone still has a 4×4 map


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages with 2×2 max-pooling after the first three (stride 8), GAP head."""

    def __init__(
        self,
        num_classes: int,
        width: int = 16,
        convs: tuple[int, ...] = (1, 1, 1, 2),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i, n in enumerate(convs):
            out_ch = width * 2**i
            for _ in range(n):
                layers += [
                    nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                ]
                in_ch = out_ch
            if i < len(convs) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register(
    "small_cnn",
    "classify",
    input_size=64,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    description="small from-scratch CNN for 64x64 images (stride 8; the demo caption encoder)",
)
def build_small_cnn(num_classes: int, pretrained: bool = False, **kw: object) -> nn.Module:
    """The registry builder of :class:`SmallCNN` (no pretrained weights exist)."""
    if pretrained:
        raise ValueError(
            "small_cnn has no pretrained weights; use --no-pretrained (or --weights PATH)"
        )
    return SmallCNN(num_classes, **kw)  # type: ignore[arg-type]


class SpatialEncoder(nn.Module):
    """A traced backbone returning its last spatial map, optionally pooled to a fixed grid.

    ``skip_tokens`` is set for a transformer whose last features are tokens (B, L, D): the
    first ``skip_tokens`` (class token) are dropped and the rest laid out as a square map.
    """

    def __init__(
        self, body: nn.Module, node: str, grid: int | None = None, skip_tokens: int | None = None
    ) -> None:
        super().__init__()
        self.body = body
        self.node = node
        self.skip_tokens = skip_tokens
        self.pool = nn.AdaptiveAvgPool2d(grid) if grid else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.body(images)[self.node]
        if self.skip_tokens is not None:
            tokens = out[:, self.skip_tokens :]
            side = math.isqrt(tokens.shape[1])
            out = tokens.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)
        return self.pool(out)


def _as_map(out: object) -> tuple[int, int | None] | None:
    """(channels, tokens to skip) when ``out`` is a spatial map or square token grid."""
    if not isinstance(out, torch.Tensor):
        return None
    if out.ndim == 4 and out.shape[2] * out.shape[3] > 1:
        return out.shape[1], None
    if out.ndim == 3:
        side = math.isqrt(out.shape[1])
        if side >= 2 and out.shape[1] - side * side <= 1:
            return out.shape[2], out.shape[1] - side * side
    return None


def last_spatial_node(model: nn.Module, size: int = _PROBE_SIZE) -> tuple[str, int, int | None]:
    """The last FX node of ``model`` that is a spatial map: (name, channels, tokens to skip)."""
    _, nodes = get_graph_node_names(model)
    nodes = [n for n in nodes if n != "x"]
    probe = create_feature_extractor(model, return_nodes=nodes).eval()
    with torch.no_grad():
        outs = probe(torch.zeros(1, 3, size, size))
    spatial = [(name, *m) for name, out in outs.items() if (m := _as_map(out)) is not None]
    if not spatial:
        raise ValueError(f"{type(model).__name__} has no spatial feature map to attend over")
    return spatial[-1]


def build_encoder(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    grid: int | None = None,
    **kwargs: object,
) -> tuple[nn.Module, int]:
    """A registered classifier cut before its pooling and head: images → (B, C, H, W), and C.

    ``weights`` is a classifier weights file (its head is ignored); ``grid`` pools the map
    to ``grid × grid`` (e.g. 14, as in Show, Attend and Tell) whatever the input size;
    ``kwargs`` go to the classifier's builder (e.g. ``width`` of ``small_cnn``).
    """
    if get_spec(name).needs_clip:
        raise ValueError(
            f"{name} reads CLIP embeddings, not pixels, so it cannot encode images for "
            "captioning; choose a CNN or ViT backbone (see `pixtell models --task classify`)"
        )
    model = create(
        name, "classify", num_classes=1, pretrained=pretrained, weights=weights, **kwargs
    )
    # probe at the model's own size when it is fixed (ViT), else big enough for stride 32
    node, channels, skip = last_spatial_node(model, max(_PROBE_SIZE, get_spec(name).input_size))
    body = create_feature_extractor(model, return_nodes=[node])
    return SpatialEncoder(body, node, grid, skip), channels
