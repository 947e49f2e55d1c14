"""DetectionModule: train modes and their param groups, the stepped schedule, fit + val mAP."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.transforms.functional import pil_to_tensor

from pixtell.data.demo import SHAPES, render_scene
from pixtell.detect.data import collate
from pixtell.detect.module import CocoMAP, DetectionModule


def _scenes(n: int, seed: int) -> list[tuple[torch.Tensor, dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = render_scene(rng, img_size=128, n_objects=int(rng.integers(1, 4)))
        target = {
            "boxes": torch.tensor([o.box for o in s.objects], dtype=torch.float32),
            "labels": torch.tensor([SHAPES.index(o.shape) + 1 for o in s.objects]),
            "image_id": seed * 1000 + i,
        }
        out.append((pil_to_tensor(s.image).float() / 255, target))
    return out


def _loader(items: list, batch_size: int = 4) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(items, batch_size, collate_fn=collate)


def _trainer(**kw: object) -> L.Trainer:
    opts = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**opts, **kw})


def _optimizer(module: DetectionModule, steps: int = 10) -> torch.optim.Optimizer:
    # configure_optimizers only reads the step count from the trainer
    module._trainer = SimpleNamespace(estimated_stepping_batches=steps, max_epochs=1)
    return module.configure_optimizers()["optimizer"]


def test_split_puts_every_parameter_in_the_optimizer_at_its_lr() -> None:
    module = DetectionModule("tiny_fcos", 6, train_mode="split", lr=1e-3, backbone_lr_mult=0.1)
    groups = _optimizer(module).param_groups
    lr_of = {id(p): g["initial_lr"] for g in groups for p in g["params"]}  # before warmup
    params = list(module.net.parameters())
    backbone = {id(p) for p in module.net.backbone.body.parameters()}
    assert len(lr_of) == len(params) == sum(len(g["params"]) for g in groups)
    assert 0 < len(backbone) < len(params)
    for p in params:
        assert lr_of[id(p)] == pytest.approx(1e-4 if id(p) in backbone else 1e-3)


def test_full_trains_everything_at_one_lr_and_head_drops_the_backbone() -> None:
    full = DetectionModule("tiny_fcos", 2, train_mode="full", lr=1e-3)
    groups = _optimizer(full).param_groups
    assert {g["initial_lr"] for g in groups} == {1e-3}
    assert sum(len(g["params"]) for g in groups) == len(list(full.net.parameters()))
    head = DetectionModule("tiny_fcos", 2, train_mode="head")
    backbone = {id(p) for p in head.net.backbone.body.parameters()}
    in_opt = {id(p) for g in _optimizer(head).param_groups for p in g["params"]}
    assert in_opt and not in_opt & backbone
    assert in_opt == {id(p) for p in head.net.parameters()} - backbone


def test_head_mode_trains_only_the_head_and_keeps_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    module = DetectionModule("tiny_fcos", len(SHAPES), train_mode="head", lr=1e-2)
    body, rest = module.net.backbone.body, module.net.head
    before_body = {k: v.clone() for k, v in body.state_dict().items()}  # incl. running stats
    before_head = {k: v.clone() for k, v in rest.state_dict().items()}
    _trainer(max_steps=2).fit(module, _loader(_scenes(8, 1)))
    after_body = body.state_dict()
    for key, value in before_body.items():
        assert torch.equal(value, after_body[key]), key
    assert any(not torch.equal(v, rest.state_dict()[k]) for k, v in before_head.items())
    assert not body.training and module.net.head.training  # the state the fit ended in


def test_lr_follows_warmup_then_decays_every_step() -> None:
    torch.manual_seed(0)
    module = DetectionModule(
        "tiny_fcos", 6, train_mode="split", lr=1e-2, epochs=1, warmup_epochs=0.5
    )
    seen: list[tuple[float, float]] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
            seen.append((min(lrs), max(lrs)))

    _trainer(callbacks=[Record()]).fit(module, _loader(_scenes(16, 2), batch_size=2))
    heads = [hi for _, hi in seen]
    assert len(heads) == 8
    # 8 steps, 4 of warmup: LR = lr * (s + 1) / 5 for s < 4, then a cosine down from lr
    assert heads[:4] == pytest.approx([2e-3, 4e-3, 6e-3, 8e-3])
    assert heads[4] == pytest.approx(1e-2)
    assert all(a > b for a, b in zip(heads[4:], heads[5:], strict=False))
    assert all(lo == pytest.approx(hi * 0.1) for lo, hi in seen)  # split ratio kept


def test_fit_logs_losses_and_validation_map() -> None:
    torch.manual_seed(0)
    module = DetectionModule("tiny_fcos", len(SHAPES), class_names=list(SHAPES))
    trainer = _trainer(limit_train_batches=2)
    trainer.fit(module, _loader(_scenes(8, 3)), _loader(_scenes(4, 4)))
    metrics = trainer.callback_metrics
    for key in ("val_map", "val_map_50", "val_map_75"):
        assert 0.0 <= float(metrics[key]) <= 1.0
    for key in ("train_loss", "train_loss_classification", "train_loss_bbox_regression"):
        assert torch.isfinite(metrics[key])
    # checkpoints hold the detector once, under net. (what read_state_dict strips)
    assert set(module.state_dict()) == {f"net.{k}" for k in module.net.state_dict()}


def test_coco_map_matches_torchmetrics_and_ignores_padding_duplicates() -> None:
    gen = torch.Generator().manual_seed(0)
    metric, reference = CocoMAP(["a", "b", "c"]), MeanAveragePrecision(backend="faster_coco_eval")
    batches = []
    for image_id in range(12):
        n = int(torch.randint(1, 4, (1,), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * 60
        boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=gen) * 50], 1)
        target = {"boxes": boxes, "labels": torch.randint(1, 4, (n,), generator=gen)}
        noisy = boxes + torch.randn(n, 4, generator=gen) * 4
        pred = {
            "boxes": torch.cat([noisy, boxes[:1] + 30]),
            "scores": torch.rand(n + 1, generator=gen),
            "labels": torch.cat([target["labels"], torch.tensor([1])]),
        }
        reference.update([pred], [target])
        batches.append((pred, {**target, "image_id": image_id}))
    # a confident background detection (label 0) is dropped, not scored as a class
    pred, target = batches[0]
    extra = {"boxes": [[0.0, 0.0, 5.0, 5.0]], "scores": [1.0], "labels": [0]}
    batches[0] = ({k: torch.cat([v, torch.tensor(extra[k])]) for k, v in pred.items()}, target)
    for pred, target in batches + batches[:2]:  # a DistributedSampler repeats to even out
        metric.update([pred], [target], [(128, 128)])
    ours, ref = metric.compute(), reference.compute()
    for key in ("map", "map_50", "map_75"):
        assert ours[key] == pytest.approx(float(ref[key]), abs=1e-6)
    assert 0.1 < ours["map_50"] < 0.99  # the comparison is not between two trivial values
