"""Model registry: every model builds, TinyVGG is fully convolutional, weights load offline."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pixtell.models import WeightsUnavailableError, count_params, create, get_spec, list_models

EXPECTED = {
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "efficientnet_b0",
    *(f"tinyvgg_{c}" for c in "abcde"),
}


def test_registry_has_every_classifier() -> None:
    assert {s.name for s in list_models("classify")} >= EXPECTED
    with pytest.raises(ValueError, match="choose one of"):
        get_spec("vgg_huge")


@pytest.mark.parametrize("name", [f"tinyvgg_{c}" for c in "abcde"])
def test_tinyvgg_configs_grow_and_take_any_size(name: str) -> None:
    model = create(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
        assert model(torch.randn(1, 3, 40, 56)).shape == (1, 7)  # dense evaluation


def test_tinyvgg_depths_follow_vgg_table() -> None:
    convs = {
        c: sum(
            isinstance(m, torch.nn.Conv2d) for m in create(f"tinyvgg_{c}", num_classes=2).modules()
        )
        for c in "abcde"
    }
    assert convs == {"a": 8, "b": 10, "c": 13, "d": 13, "e": 16}  # VGG11..19 minus 3 FC
    assert count_params(create("tinyvgg_e", num_classes=2)) > count_params(
        create("tinyvgg_a", num_classes=2)
    )


def test_torchvision_model_without_weights() -> None:
    model = create("mobilenet_v3_small", num_classes=3, pretrained=False).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_offline_pretrained_fails_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    # torchvision imported the name into its own module; patching torch.hub alone would
    # pass only because this machine happens to be offline
    import torchvision.models._api as tv_api

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as exc:
        create("resnet18", num_classes=3, pretrained=True)
    msg = str(exc.value)
    assert "--weights PATH" in msg and "--no-pretrained" in msg and "\n" not in msg


def test_weights_file_loads_and_new_head_is_fresh(tmp_path: Path) -> None:
    src = create("tinyvgg_a", num_classes=10)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save(src.state_dict(), tmp_path / "w.pt")
    for f in ("w.safetensors", "w.pt"):
        dst = create("tinyvgg_a", num_classes=4, weights=tmp_path / f)
        assert torch.equal(dst.features[0].weight, src.features[0].weight)
        assert dst.classifier[-1].weight.shape == (4, 128)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    src = create("tinyvgg_b", num_classes=4)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "b.safetensors")
    with pytest.raises(WeightsUnavailableError, match="check --model"):
        create("tinyvgg_a", num_classes=4, weights=tmp_path / "b.safetensors")
    with pytest.raises(WeightsUnavailableError, match="not found"):
        create("tinyvgg_a", num_classes=4, weights=tmp_path / "missing.safetensors")
