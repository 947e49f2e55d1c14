"""Object detectors: torchvision's detection models and ``tiny_fcos``, a small FCOS for CPUs.

Every builder takes ``num_classes`` object classes (background excluded) and builds the
torchvision model with ``num_classes + 1`` outputs: torchvision reserves label 0 for the
background, so targets carry 1-based labels. With ``pretrained=True`` the COCO weights load
through torchvision's own ``weights=`` API and the class-specific layers are replaced.
The models take 0-1 images of any size: resizing (``min_size``/``max_size``) and the
normalisation recorded as the spec's ``mean``/``std`` happen inside them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models import detection as tvd
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.ssdlite import SSDLiteClassificationHead
from torchvision.ops import Conv2dNormActivation, FeaturePyramidNetwork

from pixtell.models.registry import register
from pixtell.models.torchvision_models import load_torchvision

# name → (family, input size, submodule treated as the backbone by the train modes).
# The FPN / SSD extra layers are not part of the backbone: with a new domain they train with
# the heads, and in ``head`` mode only the feature extractor itself is frozen.
DETECTORS: dict[str, tuple[str, int, str]] = {
    "fasterrcnn_resnet50_fpn": ("rcnn", 800, "backbone.body"),
    "fasterrcnn_resnet50_fpn_v2": ("rcnn", 800, "backbone.body"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("rcnn", 800, "backbone.body"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("rcnn", 320, "backbone.body"),
    "retinanet_resnet50_fpn": ("dense", 800, "backbone.body"),
    "retinanet_resnet50_fpn_v2": ("dense", 800, "backbone.body"),
    "fcos_resnet50_fpn": ("dense", 800, "backbone.body"),
    "ssdlite320_mobilenet_v3_large": ("ssd", 320, "backbone.features"),
    "tiny_fcos": ("dense", 128, "backbone.body"),
}
_HEADS = {
    "rcnn": "roi_heads.box_predictor",
    "dense": "head.classification_head",
    "ssd": "head.classification_head",
}


def backbone_path(name: str) -> str:
    """Attribute path of the backbone of detector ``name`` (frozen in ``head`` train mode)."""
    return DETECTORS[name][2]


def _replace_class_head(model: nn.Module, family: str, num_outputs: int) -> nn.Module:
    """Give a COCO-trained detector a fresh classifier for ``num_outputs`` (incl. background)."""
    if family == "rcnn":
        old = model.roi_heads.box_predictor.cls_score
        model.roi_heads.box_predictor = FastRCNNPredictor(old.in_features, num_outputs)
    elif family == "dense":  # RetinaNet and FCOS: one conv with anchors x classes outputs
        head = model.head.classification_head
        old = head.cls_logits
        new = nn.Conv2d(old.in_channels, head.num_anchors * num_outputs, 3, padding=1)
        nn.init.normal_(new.weight, std=0.01)
        nn.init.constant_(new.bias, -math.log((1 - 0.01) / 0.01))  # the focal-loss prior
        head.cls_logits, head.num_classes = new, num_outputs
    else:  # SSDlite: one prediction block per feature map
        model.head.classification_head = SSDLiteClassificationHead(
            det_utils.retrieve_out_channels(model.backbone, (320, 320)),
            model.anchor_generator.num_anchors_per_location(),
            num_outputs,
            partial(nn.BatchNorm2d, eps=0.001, momentum=0.03),  # as torchvision's builder
        )
    return model


def _silence_background(model: nn.Module) -> nn.Module:
    """Make a sigmoid head (RetinaNet, FCOS) never output label 0.

    torchvision's convention keeps an output for the background class even in these heads;
    no target ever has label 0, so its logit only learns to be low, but at the start of
    training it scores like any other class. A very negative bias keeps it below every
    score threshold from the first step (the focal loss gives it a vanishing gradient).
    """
    head = model.head.classification_head
    with torch.no_grad():
        head.cls_logits.bias.view(head.num_anchors, head.num_classes)[:, 0] = -20.0
    return model


def _make_builder(name: str, family: str):  # noqa: ANN202
    def build(num_classes: int, pretrained: bool = False, **kwargs: object) -> nn.Module:
        if pretrained:
            model = load_torchvision(name, True, **kwargs)
            model = _replace_class_head(model, family, num_classes + 1)
        else:
            # weights_backbone=None explicitly: torchvision's default would download ImageNet.
            model = tvm.get_model(
                name, weights=None, weights_backbone=None, num_classes=num_classes + 1, **kwargs
            )
        return _silence_background(model) if family == "dense" else model

    build.__name__ = f"build_{name}"
    return build


for _name, (_family, _size, _) in DETECTORS.items():
    if _name == "tiny_fcos":
        continue
    register(
        _name,
        "detect",
        input_size=_size,
        mean=(0.5, 0.5, 0.5) if _family == "ssd" else (0.485, 0.456, 0.406),
        std=(0.5, 0.5, 0.5) if _family == "ssd" else (0.229, 0.224, 0.225),
        head=_HEADS[_family],
        has_pretrained=True,
        description=f"torchvision {_name} (COCO weights available)",
    )(_make_builder(_name, _family))


# ------------------------------------------------------------------------------ tiny_fcos


class TinyFPNBackbone(nn.Module):
    """Conv-BN-ReLU stages (each halves the size) and a two-level FPN on the last two.

    Returns the feature maps at strides ``2 ** len(widths) / 2`` and ``2 ** len(widths)``
    (8 and 16 with the default four stages), as torchvision's detectors expect.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), fpn_channels: int = 64):
        super().__init__()
        stages, in_ch = [], 3
        for i, w in enumerate(widths):
            layers = [Conv2dNormActivation(in_ch, w, 3, stride=2)]
            if i > 0:  # the stem stays a single conv: full-resolution convs are the costliest
                layers.append(Conv2dNormActivation(w, w, 3))
            stages.append(nn.Sequential(*layers))
            in_ch = w
        self.body = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(widths[-2:]), fpn_channels)
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = []
        for stage in self.body:
            x = stage(x)
            feats.append(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats[-2:])))


@register(
    "tiny_fcos",
    "detect",
    input_size=128,
    head=_HEADS["dense"],
    description="small FCOS (4-stage conv backbone, 2-level FPN) for CPUs and small datasets",
)
def build_tiny_fcos(
    num_classes: int,
    pretrained: bool = False,
    *,
    img_size: int = 128,
    widths: tuple[int, ...] = (16, 32, 64, 128),
    fpn_channels: int = 64,
    head_convs: int = 2,
    anchor_sizes: tuple[int, int] | None = None,
    center_sampling_radius: float = 1.5,
    score_thresh: float = 0.05,
    train_sizes: Sequence[int] | None = None,
    **kwargs: object,
) -> nn.Module:
    """torchvision's ``FCOS`` with :class:`TinyFPNBackbone`; ``fpn_channels`` must be a
    multiple of 32 (the head's GroupNorm). ``anchor_sizes`` defaults to the two strides.

    ``train_sizes``: multi-scale training; torchvision's transform draws the shorter side from
    them for every training batch and evaluates at the last size, ``img_size``."""
    if pretrained:
        raise ValueError(
            "tiny_fcos has no pretrained weights; use --no-pretrained (or --weights PATH for "
            "your own)"
        )
    backbone = TinyFPNBackbone(tuple(widths), fpn_channels)
    if anchor_sizes is None:
        stride = 2 ** len(widths)
        anchor_sizes = (stride // 2, stride)
    anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((1.0,),) * 2)
    head = tvd.fcos.FCOSHead(fpn_channels, 1, num_classes + 1, num_convs=head_convs)
    model = tvd.FCOS(
        backbone,
        num_classes + 1,
        min_size=(*train_sizes, img_size) if train_sizes else img_size,
        max_size=max([img_size, *(train_sizes or [])]),
        anchor_generator=anchors,
        head=head,
        center_sampling_radius=center_sampling_radius,
        score_thresh=score_thresh,
        **kwargs,
    )
    return _silence_background(model)
