"""TinyVGG: the VGG configurations A–E scaled down for small images (e.g. 32×32).

The stages follow Simonyan & Zisserman (2014), table 1: A has 1-1-2-2-2 convolutions per
stage, B 2-2-2-2-2, C like B plus a 1×1 convolution in stages 3–5, D 2-2-3-3-3 and
E 2-2-4-4-4; widths are ``width × (1, 2, 4, 8, 8)`` with BatchNorm. The head is global
average pooling + a linear layer, so the network is fully convolutional and can score a
whole uncropped image at any size (VGG's dense evaluation).
"""

from __future__ import annotations

from torch import nn

from pixtell.models.registry import register

# per stage: kernel sizes of its convolutions
CONFIGS: dict[str, list[list[int]]] = {
    "a": [[3], [3], [3, 3], [3, 3], [3, 3]],
    "b": [[3, 3], [3, 3], [3, 3], [3, 3], [3, 3]],
    "c": [[3, 3], [3, 3], [3, 3, 1], [3, 3, 1], [3, 3, 1]],
    "d": [[3, 3], [3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "e": [[3, 3], [3, 3], [3, 3, 3, 3], [3, 3, 3, 3], [3, 3, 3, 3]],
}
WIDTH_MULT = (1, 2, 4, 8, 8)


class TinyVGG(nn.Module):
    """VGG-style network: conv-BN-ReLU stages with max-pooling, GAP + linear head."""

    def __init__(
        self, config: str, num_classes: int, width: int = 16, dropout: float = 0.2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for kernels, mult in zip(CONFIGS[config], WIDTH_MULT, strict=True):
            out_ch = width * mult
            for k in kernels:
                layers += [
                    nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=False),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                ]
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.pool(self.features(x)))


def _make_builder(config: str):  # noqa: ANN202
    def build(
        num_classes: int, pretrained: bool = False, width: int = 16, **kw: object
    ) -> nn.Module:
        if pretrained:
            raise ValueError(
                f"tinyvgg_{config} has no pretrained weights; use --no-pretrained "
                "(or --weights PATH for your own)"
            )
        return TinyVGG(config, num_classes, width=width, **kw)

    build.__name__ = f"build_tinyvgg_{config}"
    return build


for _cfg in CONFIGS:
    register(
        f"tinyvgg_{_cfg}",
        "classify",
        input_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        description=f"VGG configuration {_cfg.upper()} scaled down for 32x32 images",
    )(_make_builder(_cfg))
