"""The task-agnostic run flow: run directory, resume rules, DDP joining, the Trainer, export.

A task describes itself with a :class:`Recipe` (its settings class, how to read and split
its data, its LightningModule and DataModule, what goes into ``model.json``);
:func:`train` does everything else the same way for every task.
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import json
import logging
import os
import shlex
import signal
import sys
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, RichProgressBar
from lightning.pytorch.trainer.states import TrainerStatus
from pydantic import ValidationError
from rich.console import Console

from pixtell.callbacks import (  # noqa: F401  (RNGState is part of the engine's API)
    EpochSeed,
    EpochTable,
    PlateauStepper,
    RNGState,
    RunCheckpoint,
    StagedEarlyStopping,
    build_loggers,
    check_loggers,
)
from pixtell.config import (
    TrainerSettings,
    flag_name,
    load_config,
    read_settings_file,
    save_config,
)
from pixtell.models import get_spec, save_model
from pixtell.report import plot_training_curves
from pixtell.runs import CONFIG_FILE, RESULTS_FILE, Run, new_run_dir

# Our run directory always holds config.yaml and split.json before training starts, and
# Lightning's own deprecation chatter is not the user's business.
warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*The dirpath has changed.*")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage()
)

LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
RESUMES_FILE = "resumes.jsonl"
RUN_DIR_ENV = "PIXTELL_RUN_DIR"  # lets DDP worker processes join the launcher's run
# How a run is executed, not what it trains: these may change when it is resumed.
RESUMABLE = frozenset(
    {
        "epochs",
        "patience",
        "accelerator",
        "devices",
        "strategy",
        "num_workers",
        "logger",
        "progress",
        "verbose",
        "mixed_precision",
        "save_every_n_steps",
    }
)
NOT_ON_RESUME = frozenset({"out", "name"})  # the run directory is already chosen

console = Console(highlight=False, soft_wrap=True)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; the run was still finished (best weights exported)."""

    def __init__(self, run: Run, command: str) -> None:
        super().__init__(f"training interrupted; resume with: {command}")
        self.run, self.command = run, command


class Recipe(ABC):
    """What a task supplies to the shared run flow (one subclass per task)."""

    task: ClassVar[str]
    config_cls: ClassVar[type[TrainerSettings]]
    table_keys: ClassVar[tuple[str, ...]] = ("train_loss", "val_loss")

    @abstractmethod
    def prepare(self, cfg: Any) -> Any:
        """Read and split the data of a new run; writes nothing."""

    @abstractmethod
    def save_data(self, run_dir: Path, data: Any) -> None:
        """Record the split in the run (e.g. ``split.json``)."""

    @abstractmethod
    def load_data(self, run_dir: Path, cfg: Any) -> Any:
        """The recorded split of an existing run."""

    @abstractmethod
    def build_module(self, cfg: Any, data: Any) -> L.LightningModule:
        """The LightningModule; its ``net`` attribute is what gets exported."""

    @abstractmethod
    def build_datamodule(self, cfg: Any, data: Any) -> L.LightningDataModule:
        """The LightningDataModule (its ``num_workers`` decides the CPU share)."""

    @abstractmethod
    def monitor(self, cfg: Any) -> tuple[str, str]:
        """(metric, 'min' | 'max') for the best checkpoint and early stopping."""

    @abstractmethod
    def model_meta(self, cfg: Any, data: Any) -> dict[str, Any]:
        """The contents of ``model.json`` (task, arch, classes or vocabulary, input)."""

    @abstractmethod
    def steps_per_epoch(self, cfg: Any, data: Any) -> int:
        """Optimizer steps in one epoch (for logging intervals)."""

    def run_name(self, cfg: Any) -> str:
        return cfg.name or cfg.model

    def wants_pretrained(self, cfg: Any) -> bool:
        """``--pretrained`` as given, else whether the model has weights to load."""
        spec = get_spec(cfg.model, self.task)
        return spec.has_pretrained if cfg.pretrained is None else cfg.pretrained

    def starts_trained(self, cfg: Any) -> bool:
        """The model starts from pretrained weights or a ``--weights`` file."""
        return bool(cfg.weights) or self.wants_pretrained(cfg)

    @staticmethod
    def shared_hparams(
        module_cls: type[L.LightningModule], cfg: Any, exclude: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Every hyper-parameter of ``module_cls`` that is also a setting, from the config."""
        params = inspect.signature(module_cls.__init__).parameters.keys()
        names = (params & type(cfg).model_fields.keys()) - set(exclude)
        return {k: getattr(cfg, k) for k in names}

    def stage_boundary(self, cfg: Any) -> int:
        """First epoch of the last training stage (early stopping waits until then)."""
        return 0

    def has_frozen_stage(self, cfg: Any) -> bool:
        """Some parameters get no gradient in some epochs (DDP must be told)."""
        return False

    def stage_name(self, cfg: Any, epoch: int) -> str | None:
        return None

    def extend_epochs(self, recorded: Any, epochs: int) -> dict[str, Any]:
        """Settings that train up to ``epochs`` in all (a resumed run asked for more)."""
        return {"epochs": epochs}

    def total_epochs(self, cfg: Any) -> int:
        return cfg.epochs

    def describe(self, cfg: Any, data: Any) -> None:
        """Print what is about to be trained (split sizes, warnings)."""
        return None


@dataclass
class _Progress:
    """How far the last checkpoint of a run got."""

    epochs_done: int
    global_step: int
    stopped_early: bool


# -- resume ----------------------------------------------------------------------------------
def _checkpoint_progress(ckpt: Path) -> _Progress:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    stopped = any(
        k.startswith("StagedEarlyStopping") and v.get("stopped_epoch", 0) > 0
        for k, v in state.get("callbacks", {}).items()
    )
    return _Progress(int(state["epoch"]) + 1, int(state["global_step"]), stopped)


def resume_settings(
    recipe: Recipe, recorded: Any, given: dict[str, Any], source: dict[str, str]
) -> tuple[Any, dict[str, list[Any]]]:
    """The settings of a resumed run and what changed, refusing changes to what defines it."""
    cls = type(recorded)
    before = recorded.model_dump(mode="json")
    given = dict(given)
    if "data" in given:  # the same folder spelled differently is no change
        with contextlib.suppress(OSError):
            if Path(given["data"]).resolve() == Path(before["data"]).resolve():
                given["data"] = before["data"]
    placed = [k for k in given if k in NOT_ON_RESUME]
    if placed:
        raise ValueError(
            f"{', '.join(flag_name(k) for k in placed)} cannot be used with --resume: "
            "the run keeps its directory"
        )
    try:
        wanted = cls.model_validate({**before, **given}).model_dump(mode="json")
    except ValidationError:
        load_config(cls, None, **{**before, **given})  # raises the one-line message
        raise
    fixed = [k for k in given if k not in RESUMABLE and wanted.get(k) != before.get(k)]
    if fixed:
        parts = [
            f"{flag_name(k)} (recorded: {before.get(k)!r}"
            + (f", from {source[k]})" if k in source else ")")
            for k in fixed
        ]
        raise ValueError(
            "cannot change what defines the run on --resume: "
            + "; ".join(parts)
            + ". Start a new run to train with other settings"
        )
    update = {k: wanted[k] for k in given if k in RESUMABLE}
    if "epochs" in update:
        if update["epochs"] < before["epochs"]:
            raise ValueError(
                f"--epochs {update['epochs']} is below the recorded {before['epochs']}; "
                "a resumed run can only train longer"
            )
        update.update(recipe.extend_epochs(recorded, update.pop("epochs")))
    cfg = cls.model_validate({**before, **update})
    after = cfg.model_dump(mode="json")
    changes = {k: [before[k], after[k]] for k in after if after[k] != before.get(k)}
    return cfg, changes


def _check_can_continue(
    run_dir: Path, recipe: Recipe, cfg: Any, recorded: Any, done: _Progress
) -> None:
    total = recipe.total_epochs(cfg)
    if done.epochs_done >= total:
        raise ValueError(
            f"{run_dir} already finished all {total} epochs; pass --epochs N with N larger "
            f"than {cfg.epochs} to train longer"
        )
    if done.stopped_early and cfg.patience and cfg.patience <= recorded.patience:
        raise ValueError(
            f"{run_dir} stopped early after epoch {done.epochs_done} (--patience "
            f"{cfg.patience}); pass a larger --patience (or --patience 0) to go on"
        )


def _record_resume(run_dir: Path, done: _Progress, changes: dict[str, list[Any]]) -> None:
    entry = {
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        "from_epoch": done.epochs_done,
        "changed": changes,
    }
    with open(run_dir / RESUMES_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def trim_metrics(path: Path, epochs_done: int, global_step: int) -> int:
    """Drop the rows an interrupted epoch logged after the checkpoint; returns how many."""
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or [], list(reader)

    def after_checkpoint(row: dict[str, str]) -> bool:
        if row.get("epoch"):
            return int(float(row["epoch"])) >= epochs_done
        return bool(row.get("step")) and int(float(row["step"])) >= global_step

    keep = [r for r in rows if not after_checkpoint(r)]
    if len(keep) < len(rows):
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(keep)
        tmp.replace(path)
    return len(rows) - len(keep)


# -- trainer ---------------------------------------------------------------------------------
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


def quiet_lightning(verbose: bool) -> None:
    """Hide Lightning's GPU/TPU/dataloader chatter unless ``--verbose``."""
    level = logging.INFO if verbose else logging.WARNING
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(level)


def build_trainer(
    cfg: TrainerSettings,
    run_dir: Path,
    recipe: Recipe,
    *,
    extra_callbacks: list[Callback] | None = None,
    steps_per_epoch: int = 100,
) -> L.Trainer:
    """The Trainer with the house conventions for ``run_dir`` (see DESIGN.md)."""
    monitor, mode = recipe.monitor(cfg)
    callbacks: list[Callback] = [
        RunCheckpoint(
            dirpath=run_dir,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            enable_version_counter=False,
        ),
        # Lightning 2.6 writes save_last only when the best improves; resume needs every epoch.
        RunCheckpoint(dirpath=run_dir, filename="last", enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
        RNGState(),
        EpochSeed(cfg.seed),
        PlateauStepper(monitor),
        EpochTable(recipe.table_keys, lambda e: recipe.stage_name(cfg, e)),
        *(extra_callbacks or []),
    ]
    if cfg.save_every_n_steps:
        callbacks.append(
            RunCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="step-{step}",
                auto_insert_metric_name=False,
                save_top_k=-1,
                every_n_train_steps=cfg.save_every_n_steps,
                enable_version_counter=False,
            )
        )
    if cfg.patience:
        callbacks.append(
            StagedEarlyStopping(
                monitor=monitor,
                mode=mode,
                patience=cfg.patience,
                start_epoch=recipe.stage_boundary(cfg),
            )
        )
    show_bar = cfg.progress and sys.stderr.isatty()
    if show_bar:
        callbacks.append(RichProgressBar(leave=False))
    strategy = cfg.strategy
    if strategy == "ddp" and recipe.has_frozen_stage(cfg):
        # frozen layers get no gradient in some epochs, which plain DDP treats as an error
        strategy = "ddp_find_unused_parameters_true"
    devices: int | str = int(cfg.devices) if cfg.devices.isdigit() else cfg.devices
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=recipe.total_epochs(cfg),
        accelerator=cfg.accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision_for(cfg.mixed_precision, cfg.accelerator),
        callbacks=callbacks,
        logger=build_loggers(run_dir, [x for x in cfg.logger if x != "none"], run_dir.name),
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, steps_per_epoch // 4)),
        num_sanity_val_steps=0,
    )


# -- the run flow ----------------------------------------------------------------------------
def train(
    recipe: Recipe,
    data: str | Path | None = None,
    *,
    config_file: str | Path | None = None,
    resume: str | Path | Run | None = None,
    callbacks: list[Callback] | None = None,
    **overrides: Any,
) -> Run:
    """Train a new run, resume one (``resume``), or join one as a DDP worker process.

    ``data`` is the task's DATA argument. Settings: defaults < ``config_file`` <
    ``overrides``. Every user mistake is raised as a one-line ``ValueError`` /
    ``FileNotFoundError`` before anything in a run is written.
    """
    joined = os.environ.get(RUN_DIR_ENV)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if data is not None:
        overrides["data"] = data
    ckpt: Path | None = None
    if resume is not None or joined:
        run_dir = Run.load(resume or joined).dir
        recorded = load_config(recipe.config_cls, run_dir / CONFIG_FILE)
        given: dict[str, Any] = {}
        source: dict[str, str] = {}
        if config_file is not None:
            given = read_settings_file(Path(config_file))
            source = dict.fromkeys(given, str(config_file))
        given.update(overrides)
        if joined:  # a DDP worker: the launcher has validated and written the settings
            cfg, changes = recorded, {}
        else:
            cfg, changes = resume_settings(recipe, recorded, given, source)
        if resume is not None:
            ckpt = run_dir / LAST_CKPT
            if not ckpt.is_file():
                raise FileNotFoundError(
                    f"cannot resume {run_dir}: {LAST_CKPT} is missing (no epoch was completed); "
                    "start it again as a new run"
                )
            done = _checkpoint_progress(ckpt)
            _check_can_continue(run_dir, recipe, cfg, recorded, done)
        prepared = recipe.load_data(run_dir, cfg)
    else:
        cfg = load_config(recipe.config_cls, config_file, **overrides)
        prepared = recipe.prepare(cfg)
        run_dir = None
    quiet_lightning(getattr(cfg, "verbose", False))
    check_loggers(cfg.logger)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = recipe.build_module(
        cfg, prepared
    )  # before the run directory: offline weights fail first
    if run_dir is None:
        wanted = recipe.run_name(cfg)
        run_dir = new_run_dir(cfg.out, recipe.task, wanted)
        if run_dir.name != wanted:
            console.print(f"{run_dir.parent / wanted} exists; this run is {run_dir}")
        recipe.save_data(run_dir, prepared)
        save_config(cfg, run_dir / CONFIG_FILE)
    elif resume is not None and not joined:
        trimmed = trim_metrics(run_dir / "metrics.csv", done.epochs_done, done.global_step)
        if changes:
            save_config(cfg, run_dir / CONFIG_FILE)
        _record_resume(run_dir, done, changes)
        said = ", ".join(f"{flag_name(k)} {a} → {b}" for k, (a, b) in changes.items())
        console.print(
            f"resuming {run_dir} after epoch {done.epochs_done}"
            + (f" ({said})" if said else "")
            + (f"; dropped {trimmed} metrics rows of the interrupted epoch" if trimmed else "")
        )
    if not joined:
        recipe.describe(cfg, prepared)
    dm = recipe.build_datamodule(cfg, prepared)
    if ckpt is not None and hasattr(dm, "start_epoch"):
        # Lightning makes the first epoch's iterator before it calls set_epoch
        dm.start_epoch = done.epochs_done
    trainer = build_trainer(
        cfg,
        run_dir,
        recipe,
        extra_callbacks=callbacks,
        steps_per_epoch=recipe.steps_per_epoch(cfg, prepared),
    )
    share_cpus(getattr(dm, "num_workers", 0))
    if trainer.world_size > 1 and not joined:
        console.print(f"distributed over {trainer.world_size} processes ({cfg.strategy})")
    started = time.time()
    with _joinable(run_dir):
        interrupted = _fit(trainer, module, dm, ckpt)
    if not trainer.is_global_zero:
        return Run(run_dir)
    run = finish(recipe, run_dir, trainer, module, cfg, prepared, time.time() - started)
    if interrupted:
        command = f"pixtell {recipe.task} train --resume {shlex.quote(str(run_dir))}"
        raise TrainingInterrupted(run, command)
    return run


def _fit(
    trainer: L.Trainer, module: L.LightningModule, dm: L.LightningDataModule, ckpt: Path | None
) -> bool:
    """``trainer.fit``; True when Ctrl-C stopped it (Lightning then calls ``sys.exit``)."""
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    except SystemExit:
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return True
    return trainer.state.status == TrainerStatus.INTERRUPTED


@contextlib.contextmanager
def _joinable(run_dir: Path) -> Iterator[None]:
    old = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = old


def finish(
    recipe: Recipe,
    run_dir: Path,
    trainer: L.Trainer,
    module: L.LightningModule,
    cfg: Any,
    data: Any,
    seconds: float,
) -> Run:
    """Export the best weights as safetensors + model.json, plot curves, record results."""
    best = run_dir / BEST_CKPT
    if best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    save_model(module.net, run_dir, recipe.model_meta(cfg, data))
    plot_training_curves(run_dir / "metrics.csv", run_dir / "curves.png")
    monitor, _ = recipe.monitor(cfg)
    results: dict[str, Any] = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith("val_") and v.numel() == 1
    }
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None and ckpt_cb.best_model_score is not None:
        results[f"best_{monitor}"] = float(ckpt_cb.best_model_score)
    results["epochs_completed"] = trainer.current_epoch
    results["interrupted"] = trainer.state.status == TrainerStatus.INTERRUPTED
    results["train_seconds"] = round(seconds, 1)
    results["finished"] = datetime.now().astimezone().isoformat(timespec="seconds")
    (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    best_value = results.get(f"best_{monitor}", float("nan"))
    console.print(f"[green]done[/]: {run_dir} (best {monitor} {best_value:.4f})")
    return Run.load(run_dir)
