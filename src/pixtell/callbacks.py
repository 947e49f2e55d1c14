"""The Lightning callbacks and loggers of a pixtell run (the engine assembles them)."""

from __future__ import annotations

import csv
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from rich.console import Console

from pixtell.data.sampling import derive_seed
from pixtell.optim import PlateauLambdaLR


class RNGState(Callback):
    """Saves and restores Python, NumPy and torch RNG states, so a resumed run continues exactly.

    Lightning does not store them; they are kept as tensors and lists so that the
    checkpoint loads with ``torch.load(weights_only=True)``.
    """

    def state_dict(self) -> dict[str, Any]:
        version, state, gauss = random.getstate()
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        return {
            "python": [version, list(state), gauss],
            "numpy": [
                np_name,
                torch.from_numpy(np_keys.astype(np.int64)),
                np_pos,
                np_has_gauss,
                np_gauss,
            ],
            "torch": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, st, gauss = state["python"]
        random.setstate((version, tuple(st), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])


class StagedEarlyStopping(EarlyStopping):
    """Early stopping that stays quiet before ``start_epoch`` (e.g. during a head-only stage)."""

    def __init__(self, *args: Any, start_epoch: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_epoch = start_epoch

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        if trainer.current_epoch >= self.start_epoch:
            super()._run_early_stopping_check(trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores the checkpoint's patience too; a resumed run's --patience wins.
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience
        if self.wait_count < patience:
            self.stopped_epoch = 0


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps its best score when the run directory was moved or renamed.

    Lightning forgets ``best_model_score`` when the saved ``dirpath`` differs from the
    current one, so a resumed, moved run would let a worse epoch replace ``best.ckpt``.
    Paths of the old directory are mapped into the new one instead.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and os.path.realpath(old) != os.path.realpath(self.dirpath):
            new = str(self.dirpath)

            def move(path: Any) -> Any:
                return os.path.join(new, os.path.basename(path)) if path else path

            state_dict = {
                **state_dict,
                "dirpath": new,
                "best_model_path": move(state_dict.get("best_model_path", "")),
                "kth_best_model_path": move(state_dict.get("kth_best_model_path", "")),
                "last_model_path": move(state_dict.get("last_model_path", "")),
                "best_k_models": {
                    move(k): v for k, v in (state_dict.get("best_k_models") or {}).items()
                },
            }
        super().load_state_dict(state_dict)


class EpochSeed(Callback):
    """Seeds Python, NumPy and torch at the start of every training epoch from (seed, epoch, rank).

    Together with ``data.sampling`` this makes epoch ``e`` identical whether the run went
    straight through or was interrupted and resumed, whatever the number of workers.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = derive_seed(self.seed, trainer.current_epoch, trainer.global_rank, 7)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)


class PlateauStepper(Callback):
    """Steps plateau schedules on the monitored metric before the epoch's checkpoint is saved.

    Lightning steps epoch-interval schedulers after the checkpoint callbacks have run, so a
    checkpoint would miss the epoch's reduction; checkpoint callbacks run after this one.
    """

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, PlateauLambdaLR):
                config.scheduler.plateau_step(value)


class EpochTable(Callback):
    """One printed row per epoch: the metrics people scan for."""

    def __init__(
        self,
        keys: tuple[str, ...] = ("train_loss", "val_loss", "val_acc"),
        stage_name: Callable[[int], str | None] | None = None,
    ) -> None:
        self.keys = keys
        self.stage_name = stage_name
        self.console = Console(highlight=False, soft_wrap=True)
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        cells = [f"epoch {trainer.current_epoch + 1:>3}/{trainer.max_epochs}"]
        stage = self.stage_name(trainer.current_epoch) if self.stage_name else None
        if stage:
            cells.append(stage)
        cells += [f"{k} {float(m[k]):.4f}" for k in self.keys if k in m]
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        if lr is not None:
            cells.append(f"lr {lr:.2e}")
        cells.append(f"{time.perf_counter() - self._start:.1f}s")
        self.console.print(" │ ".join(cells))


class _AppendingWriter(ExperimentWriter):
    """Keeps the ``metrics.csv`` of a resumed run and appends (Lightning's deletes it)."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class RunCSVLogger(CSVLogger):
    """CSV logger writing ``metrics.csv`` straight into the run directory, never losing rows."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(save_dir=run_dir, name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def build_loggers(run_dir: Path, names: list[str], run_name: str) -> list[Logger]:
    """CSV always (``metrics.csv`` in the run); TensorBoard, W&B, MLflow on request."""
    loggers: list[Logger] = [RunCSVLogger(run_dir)]
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""))
        elif name == "wandb":
            _require("wandb", "wandb")
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(project="pixtell", name=run_name, save_dir=str(run_dir)))
        elif name == "mlflow":
            _require("mlflow", "mlflow")
            from lightning.pytorch.loggers import MLFlowLogger

            loggers.append(
                MLFlowLogger(
                    experiment_name="pixtell",
                    run_name=run_name,
                    tracking_uri=f"file:{run_dir / 'mlruns'}",
                )
            )
    return loggers


def check_loggers(names: list[str]) -> None:
    """Fail in one sentence (before any run directory exists) when a logger's package is missing."""
    for name in names:
        if name in ("wandb", "mlflow"):
            _require(name, name)


def _require(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(
            f"--logger {module} needs the {module} package: pip install 'pixtell[{extra}]' "
            "(or choose --logger tensorboard / none)"
        )
