"""Builds the Lightning Trainer every task uses: checkpoints, early stopping, loggers, resume."""

from __future__ import annotations

import csv
import logging
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from rich.console import Console

from pixtell.config import TrainerSettings

# Our run directory always holds config.yaml and split.json before training starts, and
# Lightning's own deprecation chatter is not the user's business.
warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage()
)

LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"


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


class EpochTable(Callback):
    """One printed row per epoch: the metrics people scan for."""

    def __init__(self, keys: tuple[str, ...] = ("train_loss", "val_loss", "val_acc")) -> None:
        self.keys = keys
        self.console = Console(highlight=False, soft_wrap=True)
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        cells = [f"epoch {trainer.current_epoch + 1:>3}/{trainer.max_epochs}"]
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


def _require(module: str, extra: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise RuntimeError(
            f"--logger {module} needs the {module} package; pip install 'pixtell[{extra}]'"
        ) from None


def share_cpus(num_workers: int) -> None:
    """Leave one core per DataLoader worker: oversubscribed OpenMP threads spin and crawl."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cpus or 1) - num_workers))


def precision_for(mixed: bool, accelerator: str) -> str:
    """bf16 autocast on CPU, fp16 on CUDA, full precision otherwise."""
    if not mixed:
        return "32-true"
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "16-mixed" if on_gpu else "bf16-mixed"


def build_trainer(
    cfg: TrainerSettings,
    run_dir: Path,
    *,
    monitor: str,
    mode: str,
    max_epochs: int,
    early_stop_start: int = 0,
    table_keys: tuple[str, ...] = ("train_loss", "val_loss", "val_acc"),
    extra_callbacks: list[Callback] | None = None,
    steps_per_epoch: int = 100,
) -> L.Trainer:
    """The Trainer with the house conventions for ``run_dir`` (see DESIGN.md)."""
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=run_dir,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            enable_version_counter=False,
        ),
        # Lightning 2.6 writes save_last only when the best improves; resume needs every epoch.
        ModelCheckpoint(dirpath=run_dir, filename="last", enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
        RNGState(),
        EpochTable(table_keys),
        *(extra_callbacks or []),
    ]
    if cfg.save_every_n_steps:
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="step-{step}",
                save_top_k=-1,
                every_n_train_steps=cfg.save_every_n_steps,
                enable_version_counter=False,
            )
        )
    if cfg.patience:
        callbacks.append(
            StagedEarlyStopping(
                monitor=monitor, mode=mode, patience=cfg.patience, start_epoch=early_stop_start
            )
        )
    show_bar = cfg.progress and sys.stderr.isatty()
    if show_bar:
        callbacks.append(RichProgressBar(leave=False))
    devices: int | str = int(cfg.devices) if cfg.devices.isdigit() else cfg.devices
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=max_epochs,
        accelerator=cfg.accelerator,
        devices=devices,
        strategy=cfg.strategy,
        precision=precision_for(cfg.mixed_precision, cfg.accelerator),
        callbacks=callbacks,
        logger=build_loggers(run_dir, [x for x in cfg.logger if x != "none"], run_dir.name),
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, steps_per_epoch // 4)),
        num_sanity_val_steps=0,
    )
