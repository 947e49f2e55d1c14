"""Detection models: every detector builds with a new class count, trains, fails offline."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torchvision.models import _api as tv_api

from pixtell.models import WeightsUnavailableError, count_params, create, get_spec, list_models
from pixtell.models.detection import DETECTORS, backbone_path

TORCHVISION_DETECTORS = {
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "ssdlite320_mobilenet_v3_large",
    "fcos_resnet50_fpn",
}


def _target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}


def test_registry_has_every_detector_with_its_backbone() -> None:
    names = {s.name for s in list_models("detect")}
    assert names == TORCHVISION_DETECTORS | {"tiny_fcos"}
    for name in names:
        spec = get_spec(name, "detect")
        assert spec.has_pretrained == (name != "tiny_fcos")
        model = create(name, "detect", num_classes=1000)  # what `pixtell models` does
        backbone = model.get_submodule(backbone_path(name))
        head = model.get_submodule(spec.head)
        assert 0 < count_params(backbone) < count_params(model)
        assert not {id(p) for p in head.parameters()} & {id(p) for p in backbone.parameters()}
    assert set(DETECTORS) == names


def test_tiny_fcos_trains_and_predicts_at_128px() -> None:
    torch.manual_seed(0)
    model = create("tiny_fcos", "detect", num_classes=3)
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [
        _target([[10, 12, 70, 60]], [1]),
        _target([[5, 5, 40, 90], [60, 60, 120, 110]], [2, 3]),
    ]
    losses = model.train()(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.head.classification_head.cls_logits.weight.grad is not None
    with torch.no_grad():
        preds = model.eval()(images)
    assert len(preds) == 2
    for pred in preds:
        assert pred["boxes"].shape[1] == 4 and len(pred["boxes"]) == len(pred["scores"])
        assert ((pred["labels"] >= 1) & (pred["labels"] <= 3)).all()  # 0 is the background
        assert (pred["boxes"] >= 0).all() and (pred["boxes"] <= 128).all()


def test_tiny_fcos_widths_are_configurable() -> None:
    small = create("tiny_fcos", "detect", num_classes=2, widths=(8, 16, 32, 64), fpn_channels=32)
    large = create("tiny_fcos", "detect", num_classes=2)
    assert count_params(small) < count_params(large)
    assert small.transform.min_size == (128,) and small.transform.max_size == 128
    with pytest.raises(ValueError, match="--no-pretrained"):
        create("tiny_fcos", "detect", num_classes=2, pretrained=True)


def test_torchvision_detector_trains_one_step_with_new_classes() -> None:
    torch.manual_seed(0)
    model = create("fasterrcnn_mobilenet_v3_large_320_fpn", "detect", num_classes=2)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # 2 classes + background
    images = [torch.rand(3, 96, 128), torch.rand(3, 112, 96)]
    targets = [_target([[10, 10, 60, 50]], [1]), _target([[20, 30, 90, 100]], [2])]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model.roi_heads.box_predictor.cls_score.weight.clone()
    losses = model.train()(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} == set(losses)
    sum(losses.values()).backward()
    opt.step()
    assert not torch.equal(before, model.roi_heads.box_predictor.cls_score.weight)


def test_offline_pretrained_fails_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as exc:
        create("fasterrcnn_mobilenet_v3_large_320_fpn", "detect", num_classes=3, pretrained=True)
    msg = str(exc.value)
    assert "--weights PATH" in msg and "--no-pretrained" in msg and "\n" not in msg
    assert msg.count(". ") == 0 and msg.endswith(".")


@pytest.mark.parametrize(
    ("name", "classifier"),
    [
        ("fasterrcnn_mobilenet_v3_large_320_fpn", "roi_heads.box_predictor.cls_score"),
        ("retinanet_resnet50_fpn", "head.classification_head.cls_logits"),
        ("fcos_resnet50_fpn", "head.classification_head.cls_logits"),
        ("ssdlite320_mobilenet_v3_large", "head.classification_head.module_list.0.1"),
    ],
)
def test_pretrained_keeps_coco_weights_and_replaces_the_class_head(
    monkeypatch: pytest.MonkeyPatch, name: str, classifier: str
) -> None:
    # Stand-in for the COCO download: a random model of the same architecture with 91 classes.
    coco = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    state = coco.state_dict()
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", lambda *a, **k: state)
    model = create(name, "detect", num_classes=4, pretrained=True)
    conv = model.get_submodule(classifier)
    old = coco.get_submodule(classifier)
    out = conv.out_features if isinstance(conv, torch.nn.Linear) else conv.out_channels
    old_out = old.out_features if isinstance(old, torch.nn.Linear) else old.out_channels
    assert out * 91 == old_out * 5  # anchors x (4 classes + background) instead of x 91
    body = backbone_path(name)
    own = model.get_submodule(body).state_dict()
    for key, value in coco.get_submodule(body).state_dict().items():
        if key in own:
            assert torch.equal(own[key], value), key
    model.train()
    target = _target([[10, 20, 90, 120]], [4])
    losses = model([torch.rand(3, 160, 160)] * 2, [target, target])  # SSD BatchNorm needs 2
    assert all(torch.isfinite(v) for v in losses.values())
