"""The classification LightningModule: the science (loss, metrics, stages, schedule)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from pixtell.models import clip as _clip  # noqa: F401  (registers hybrid, clip_linear)
from pixtell.models import create, get_spec
from pixtell.optim import build_optimizer, optimizer_config


class ClassifierModule(L.LightningModule):
    """Wraps a registry model; optional two stages: head only (frozen backbone), then all."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        *,
        pretrained: bool = False,
        weights: str | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        warmup_epochs: float = 0.0,
        step_size: int = 10,
        gamma: float = 0.1,
        epochs: int = 10,
        fine_tune_epochs: int = 0,
        fine_tune_lr: float | None = None,
        freeze_backbone: bool = False,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        monitor: str = "val_loss",
        patience: int = 0,
        arch_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = create(
            arch,
            "classify",
            num_classes=num_classes,
            pretrained=pretrained,
            weights=weights,
            **(arch_kwargs or {}),
        )
        self.head_prefix = get_spec(arch, "classify").head
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weight", weight, persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")

    # -- stages ---------------------------------------------------------------------------
    def backbone_frozen(self) -> bool:
        """True during stage 1 of a ``freeze_backbone`` run."""
        if not self.hparams.freeze_backbone or self._trainer is None:
            return False
        return self.current_epoch < self.hparams.epochs

    def backbone_modules(self) -> list[nn.Module]:
        head = self.net.get_submodule(self.head_prefix)
        head_ids = {id(m) for m in head.modules()}
        return [m for m in self.net.modules() if id(m) not in head_ids]

    def train(self, mode: bool = True) -> ClassifierModule:
        # Frozen layers stay in eval mode so their BatchNorm running statistics do not drift.
        super().train(mode)
        if mode and self.backbone_frozen():
            for m in self.backbone_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def on_train_epoch_start(self) -> None:
        frozen = self.backbone_frozen()
        for m in self.backbone_modules():
            for p in m.parameters(recurse=False):
                p.requires_grad_(not frozen)
        self.train()

    # -- steps ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # hybrid / clip_linear batches carry (image, CLIP features)
        return self.net(*x) if isinstance(x, list | tuple) else self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(
            logits, y, weight=self.class_weight, label_smoothing=self.hparams.label_smoothing
        )
        self.train_acc(logits, y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.val_f1(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log("val_acc", self.val_acc, prog_bar=True)
        self.log("val_f1", self.val_f1)

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        hp = self.hparams
        opt = build_optimizer(self.net, hp.optimizer, hp.lr, hp.weight_decay, hp.momentum)
        mode = "min" if hp.monitor == "val_loss" else "max"
        return optimizer_config(
            opt,
            self.trainer,
            hp,
            monitor=hp.monitor,
            mode=mode,
            fine_tune_epochs=hp.fine_tune_epochs,
            fine_tune_lr=hp.fine_tune_lr,
        )
