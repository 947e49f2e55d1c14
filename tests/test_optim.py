"""LR schedules: warm-up, cosine, step, two stages; the optimizer sees the changes."""

from __future__ import annotations

import pytest
import torch

from pixtell.optim import Schedule, build_optimizer, build_scheduler, param_groups


def test_cosine_with_warmup_rises_then_decays() -> None:
    s = Schedule("cosine", steps_per_epoch=10, epochs=5, warmup_epochs=1)
    f = [s.factor(i) for i in range(50)]
    assert f[0] < f[5] < f[9] <= 1.0  # warm-up rises
    assert f[10] > f[30] > f[49]  # cosine decays
    assert f[49] == pytest.approx(s.min_ratio, abs=0.01)


def test_step_schedule_decays_every_step_size_epochs() -> None:
    s = Schedule("step", steps_per_epoch=4, epochs=6, step_size=2, gamma=0.5)
    assert [s.factor(e * 4) for e in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_fine_tune_stage_uses_its_own_lr() -> None:
    s = Schedule(
        "cosine", steps_per_epoch=10, epochs=2, fine_tune_epochs=2, lr=1e-2, fine_tune_lr=1e-3
    )
    assert s.factor(20) == pytest.approx(0.1)  # stage 2 starts at fine_tune_lr / lr
    assert s.factor(39) < s.factor(20)


def test_scheduler_actually_changes_the_optimizer_lr() -> None:
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0)
    cfg = build_scheduler(
        opt, Schedule("cosine", 5, 2, warmup_epochs=0.4), monitor="val_loss", mode="min"
    )
    lrs = []
    for _ in range(10):
        opt.step()
        cfg["scheduler"].step()
        lrs.append(opt.param_groups[0]["lr"])
    assert len(set(lrs)) == 10 and max(lrs) == pytest.approx(0.1, rel=0.05)


def test_no_weight_decay_on_norms_and_biases() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    decay, no_decay = param_groups(model, 0.05)
    assert [p.ndim for p in decay["params"]] == [4]
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0
