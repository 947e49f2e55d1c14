"""Settings of every command as pydantic models; a YAML file plus flags, flags winning."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pixtell.data.images import DEFAULT_MAX_PIXELS

C = TypeVar("C", bound=BaseModel)


class Settings(BaseModel):
    """Base: unknown keys are errors, so a typo in a YAML file is not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TrainerSettings(Settings):
    """Engineering settings shared by every task's training (the Lightning Trainer)."""

    epochs: int = Field(15, ge=1, description="Training epochs (stage 1).")
    batch_size: int = Field(32, ge=1, description="Images per batch (per device).")
    seed: int = Field(0, description="Seed for the split, initialisation and augmentation.")
    patience: int = Field(
        0, ge=0, description="Stop after this many epochs without improving --monitor (0: off)."
    )
    mixed_precision: bool = Field(False, description="bf16 autocast on CPU, fp16 on CUDA.")
    accelerator: str = Field("auto", description="cpu, gpu, mps or auto.")
    devices: str = Field("1", description="Number of devices (or 'auto').")
    strategy: str = Field("auto", description="Lightning strategy, e.g. ddp (works on CPU).")
    num_workers: int | None = Field(
        None, ge=0, description="DataLoader workers (default: number of CPUs - 1, at most 4)."
    )
    logger: list[Literal["tensorboard", "wandb", "mlflow", "none"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Loggers besides the CSV one: tensorboard, wandb, mlflow, none.",
    )
    save_every_n_steps: int | None = Field(
        None, ge=1, description="Also keep a checkpoint every N optimizer steps."
    )
    out: Path = Field(Path("runs"), description="Parent folder of run directories.")
    name: str | None = Field(None, description="Run name (default: the model name, numbered).")
    progress: bool = Field(True, description="Show progress bars.")

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_str(cls, v: Any) -> str:
        return str(v)


class ClassifyTrainConfig(TrainerSettings):
    """Everything ``pixtell classify train`` needs; written to ``config.yaml`` in the run."""

    data: Path = Field(description="Folder of class folders (DATA/<class>/<image>).")
    model: str = Field("mobilenet_v3_small", description="Architecture (see `pixtell models`).")
    pretrained: bool | None = Field(
        None, description="Start from ImageNet weights (default: when the model has them)."
    )
    weights: Path | None = Field(None, description="Start from a local .safetensors/state dict.")
    img_size: int | None = Field(None, ge=8, description="Input size (default: the model's).")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw or sgd.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.05, ge=0, description="Weight decay (not on norms/biases).")
    momentum: float = Field(0.9, ge=0, description="SGD momentum.")
    scheduler: Literal["cosine", "step", "plateau", "none"] = Field(
        "cosine", description="LR schedule, stepped every batch (plateau: every epoch)."
    )
    warmup_epochs: float = Field(1.0, ge=0, description="Linear LR warm-up (epochs).")
    step_size: int = Field(10, ge=1, description="Epochs between decays for --scheduler step.")
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor for step and plateau.")
    monitor: Literal["val_loss", "val_acc", "val_f1"] = Field(
        "val_loss", description="Metric for the best checkpoint and early stopping."
    )
    freeze_backbone: bool = Field(
        False, description="Stage 1 trains the head only (frozen BatchNorm statistics too)."
    )
    fine_tune_epochs: int = Field(0, ge=0, description="Stage 2: epochs with everything unfrozen.")
    fine_tune_lr: float | None = Field(
        None, gt=0, description="Stage-2 peak LR (default: --lr / 10)."
    )
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing of the loss.")
    balance: Literal["none", "weights", "sampler"] = Field(
        "none", description="Imbalanced data: class-weighted loss or a balanced sampler."
    )
    augment: Literal["auto", "multiscale", "rrc", "none"] = Field(
        "auto",
        description="multiscale (VGG scale jitter + crop), rrc (random-resized crop) or none; "
        "auto: multiscale below 96 px, rrc above.",
    )
    scale_min: float = Field(1.0, ge=1, description="Multi-scale: smallest S / img_size.")
    scale_max: float = Field(1.25, ge=1, description="Multi-scale: largest S / img_size.")
    hflip: bool = Field(True, description="Random horizontal flips.")
    color_jitter: float = Field(0.1, ge=0, description="Colour-jitter strength (0: off).")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of images for validation.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of images for testing.")
    max_samples_per_class: int | None = Field(
        None, ge=1, description="Use at most N images per class."
    )
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Refuse larger images.")


def load_config(cls: type[C], config_file: Path | None = None, **overrides: Any) -> C:
    """Defaults < YAML file < overrides (``None`` overrides are ignored)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        config_file = Path(config_file)
        if not config_file.is_file():
            raise FileNotFoundError(f"config file {config_file} not found")
        loaded = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: expected a mapping of settings at the top level")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        source = f" (from {config_file} and flags)" if config_file else ""
        raise ValueError(f"invalid settings{source}:\n{exc}") from None


def save_config(cfg: BaseModel, path: Path) -> None:
    """Write the resolved settings as YAML (enough to reproduce the run)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
