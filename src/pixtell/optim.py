"""Optimizer and LR-schedule factories shared by the tasks (timm-style)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Schedule:
    """A two-stage schedule in optimizer steps: stage 1 at ``lr``, stage 2 at ``fine_tune_lr``."""

    kind: str  # cosine | step | plateau | none (plateau: warm-up and stages here, reductions
    # on the monitored metric by PlateauLambdaLR)
    steps_per_epoch: int
    epochs: int
    fine_tune_epochs: int = 0
    lr: float = 1e-3
    fine_tune_lr: float | None = None
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    min_ratio: float = 0.01

    def factor(self, step: int) -> float:
        """LR multiplier at optimizer step ``step`` (pure: the scheduler only stores ``step``)."""
        stage1 = self.epochs * self.steps_per_epoch
        if self.fine_tune_epochs and step >= stage1:
            scale = (self.fine_tune_lr or self.lr / 10) / self.lr
            return scale * self._stage(step - stage1, self.fine_tune_epochs)
        return self._stage(step, self.epochs)

    def _stage(self, step: int, epochs: int) -> float:
        total = max(1, epochs * self.steps_per_epoch)
        warmup = min(round(self.warmup_epochs * self.steps_per_epoch), total - 1)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if self.kind == "cosine":
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "step":
            return self.gamma ** ((step // self.steps_per_epoch) // self.step_size)
        return 1.0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights decay, norms and biases (1-d parameters) do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov) over all parameters; frozen ones simply receive no gradient."""
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"unknown optimizer {name!r}: use adamw or sgd")


class PlateauLambdaLR(torch.optim.lr_scheduler.LambdaLR):
    """A per-step schedule (warm-up, stages) times the reductions of a plateau rule.

    ``ReduceLROnPlateau`` writes the optimizer's LR itself, which would fight a per-step
    warm-up; here it runs on a one-parameter shadow optimizer whose LR starts at 1.0, and that
    LR is the extra factor. Its state travels in this scheduler's ``state_dict``, so a
    checkpoint holds every reduction so far. ``plateau_step(metric)`` is called once per
    validation (by ``callbacks.PlateauStepper``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        factor: Callable[[int], float],
        *,
        mode: str,
        gamma: float,
        patience: int,
    ) -> None:
        self._shadow = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self._shadow, mode=mode, factor=gamma, patience=patience
        )
        super().__init__(optimizer, lambda step: factor(step) * self.scale)

    @property
    def scale(self) -> float:
        return float(self._shadow.param_groups[0]["lr"])

    def plateau_step(self, metric: float) -> None:
        self.plateau.step(metric)
        lrs = [
            base * f(self.last_epoch)
            for base, f in zip(self.base_lrs, self.lr_lambdas, strict=True)
        ]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        state = {k: v for k, v in super().state_dict().items() if k not in ("plateau", "_shadow")}
        state["plateau_state"] = self.plateau.state_dict()
        state["plateau_scale"] = self.scale
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        plateau_state = state.pop("plateau_state", None)
        scale = state.pop("plateau_scale", 1.0)
        super().load_state_dict(state)
        if plateau_state is not None:
            self.plateau.load_state_dict(plateau_state)
        self._shadow.param_groups[0]["lr"] = scale


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    *,
    monitor: str,
    mode: str,
    patience: int = 3,
) -> dict:
    """A Lightning ``lr_scheduler`` config, stepped every optimizer step.

    ``plateau`` keeps the warm-up and the fine-tuning stage's LR and multiplies in
    ``ReduceLROnPlateau``'s reductions (see :class:`PlateauLambdaLR`).
    """
    # A closure (not a callable object) so the schedule is not frozen into the checkpoint:
    # a resumed run with more --epochs follows the new schedule from the saved step.
    if schedule.kind == "plateau":
        sched: torch.optim.lr_scheduler.LRScheduler = PlateauLambdaLR(
            optimizer,
            lambda step: schedule.factor(step),
            mode=mode,
            gamma=schedule.gamma,
            patience=patience,
        )
        return {"scheduler": sched, "interval": "step", "monitor": monitor}
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step))
    return {"scheduler": sched, "interval": "step"}


def optimizer_config(
    optimizer: torch.optim.Optimizer,
    trainer: object,
    hp: Mapping[str, object],
    *,
    monitor: str,
    mode: str,
    fine_tune_epochs: int = 0,
    fine_tune_lr: float | None = None,
) -> dict:
    """What a LightningModule's ``configure_optimizers`` returns, for every task.

    ``hp`` holds the shared settings (``scheduler``, ``epochs``, ``lr``, ``warmup_epochs``,
    ``step_size``, ``gamma``, optionally ``patience``); the schedule is in optimizer steps.
    """
    steps = max(1, int(trainer.estimated_stepping_batches) // trainer.max_epochs)  # type: ignore[attr-defined]
    schedule = Schedule(
        str(hp["scheduler"]),
        steps,
        int(hp["epochs"]),  # type: ignore[arg-type]
        fine_tune_epochs,
        float(hp["lr"]),  # type: ignore[arg-type]
        fine_tune_lr,
        float(hp["warmup_epochs"]),  # type: ignore[arg-type]
        int(hp["step_size"]),  # type: ignore[arg-type]
        float(hp["gamma"]),  # type: ignore[arg-type]
    )
    # plateau: half the early-stopping patience, so the LR drops before training stops
    patience = max(1, int(hp["patience"]) // 2) if "patience" in hp else 3  # type: ignore[arg-type]
    sched = build_scheduler(optimizer, schedule, monitor=monitor, mode=mode, patience=patience)
    return {"optimizer": optimizer, "lr_scheduler": sched}


class ClipGradNorm:
    """LightningModule mixin: clip the gradient norm to ``hparams.grad_clip`` (0: off), so no
    Trainer flag is needed; a Trainer ``gradient_clip_val`` overrides it."""

    hparams: Any

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        value = gradient_clip_val if gradient_clip_val is not None else self.hparams.grad_clip
        if value:
            self.clip_gradients(  # type: ignore[attr-defined]
                optimizer,
                gradient_clip_val=value,
                gradient_clip_algorithm=gradient_clip_algorithm or "norm",
            )
