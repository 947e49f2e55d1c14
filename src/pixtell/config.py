"""Settings of every command as pydantic models; a YAML file plus flags, flags winning."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
        None, ge=0, description="DataLoader workers [default: number of CPUs - 1, at most 4]"
    )
    logger: list[Literal["tensorboard", "wandb", "mlflow", "none"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Loggers besides the CSV one: tensorboard, wandb, mlflow, none.",
    )
    save_every_n_steps: int | None = Field(
        None, ge=1, description="Also keep a checkpoint every N optimizer steps."
    )
    out: Path = Field(Path("runs"), description="Parent folder of run directories.")
    name: str | None = Field(None, description="Run name [default: the model name, numbered]")
    progress: bool = Field(True, description="Show progress bars.")
    verbose: bool = Field(False, description="Also show Lightning's own messages.")

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_str(cls, v: Any) -> str:
        return str(v)


class ClassifyTrainConfig(TrainerSettings):
    """Everything ``pixtell classify train`` needs; written to ``config.yaml`` in the run."""

    data: Path = Field(description="Folder of class folders (DATA/<class>/<image>).")
    model: str = Field("mobilenet_v3_small", description="Architecture (see `pixtell models`).")
    mode: Literal["hybrid", "cnn", "clip"] = Field(
        "hybrid",
        description="--model hybrid: MobileNetV3 + CLIP features (hybrid), MobileNetV3 only "
        "(cnn) or CLIP only (clip).",
    )
    clip: str = Field(
        "openai/clip-vit-base-patch32",
        description="CLIP checkpoint for --model hybrid / clip_linear: a Hugging Face name or a "
        "local save_pretrained directory.",
    )
    pretrained: bool | None = Field(
        None, description="Start from ImageNet weights [default: when the model has them]"
    )
    weights: Path | None = Field(None, description="Start from a local .safetensors/state dict.")
    img_size: int | None = Field(None, ge=8, description="Input size [default: the model's]")
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
        None, gt=0, description="Stage-2 peak LR [default: --lr / 10]"
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
    cache: Literal["auto", "none", "ram", "disk"] = Field(
        "auto",
        description="Decode images once (uint8) and augment whole batches: ram, disk "
        "(memory-mapped, reused across runs) or none; auto: ram when it fits 2 GiB, else disk, "
        "none for --augment rrc or images stored above 128 px.",
    )

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> ClassifyTrainConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"--val-fraction ({self.val_fraction}) + --test-fraction ({self.test_fraction}) "
                "must be below 1, leaving images to train on"
            )
        return self


class DetectTrainConfig(TrainerSettings):
    """Everything ``pixtell detect train`` needs; written to ``config.yaml`` in the run."""

    data: Path = Field(description="Detection dataset: VOC or YOLO folder, or COCO JSON/folder.")
    format: Literal["auto", "voc", "coco", "yolo"] = Field(
        "auto", description="Dataset format (auto: detected from the layout)."
    )
    drop_empty: bool = Field(False, description="Leave out images without boxes.")
    model: str = Field("tiny_fcos", description="Detector (see `pixtell models --task detect`).")
    pretrained: bool | None = Field(
        None, description="Start from COCO weights [default: when the model has them]"
    )
    weights: Path | None = Field(None, description="Start from a local .safetensors/state dict.")
    img_size: int | None = Field(
        None, ge=32, description="Shorter side the detector resizes to [default: the model's]"
    )
    train_mode: Literal["head", "full", "split"] = Field(
        "full",
        description="head: freeze the backbone (and its BatchNorm statistics); full: train "
        "everything; split: everything, the backbone at --lr x --backbone-lr-mult.",
    )
    backbone_lr_mult: float = Field(
        0.1, gt=0, le=1, description="Backbone LR multiplier for --train-mode split."
    )
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw or sgd.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.05, ge=0, description="Weight decay (not on norms/biases).")
    momentum: float = Field(0.9, ge=0, description="SGD momentum.")
    scheduler: Literal["cosine", "step", "plateau", "none"] = Field(
        "cosine", description="LR schedule, stepped every batch (plateau: every epoch)."
    )
    warmup_epochs: float = Field(0.15, ge=0, description="Linear LR warm-up (epochs).")
    step_size: int = Field(10, ge=1, description="Epochs between decays for --scheduler step.")
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor for step and plateau.")
    monitor: Literal["val_map", "val_map_50"] = Field(
        "val_map", description="Validation mAP for the best checkpoint and early stopping."
    )
    multiscale: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Multi-scale training: each batch's shorter side drawn from --img-size x "
        "[1 - m, 1 + m] (evaluation stays at --img-size); 0: off.",
    )
    hflip: bool = Field(True, description="Random horizontal flips (boxes flip too).")
    batch_size: int = Field(16, ge=1, description="Images per batch (per device).")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of images for validation.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of images for testing.")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DetectTrainConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"--val-fraction ({self.val_fraction}) + --test-fraction ({self.test_fraction}) "
                "must be below 1, leaving images to train on"
            )
        return self


class CaptionTrainConfig(TrainerSettings):
    """Everything ``pixtell caption train`` needs; written to ``config.yaml`` in the run."""

    data: Path = Field(
        description="Flickr8k folder, COCO captions JSON, Karpathy JSON or demo folder."
    )
    format: Literal["flickr8k", "coco", "karpathy", "demo"] | None = Field(
        None, description="Force the annotation format [default: detected]"
    )
    images: Path | None = Field(None, description="Image folder [default: found beside DATA]")
    model: Literal["show_attend_tell", "show_tell", "blip"] = Field(
        "show_attend_tell",
        description="Caption model (see `pixtell models --task caption`), or blip: fine-tune "
        "the pretrained BLIP named by --blip.",
    )
    blip: str = Field(
        "Salesforce/blip-image-captioning-base",
        description="--model blip: a Hugging Face BLIP checkpoint name or a local "
        "save_pretrained directory.",
    )
    encoder: str = Field("small_cnn", description="Any classification backbone of the registry.")
    pretrained: bool | None = Field(
        None, description="ImageNet weights for the encoder [default: when it has them]"
    )
    weights: Path | None = Field(None, description="Encoder weights from a local file.")
    attention: Literal["soft", "hard"] = Field(
        "soft", description="show_attend_tell: soft (Bahdanau) or hard (REINFORCE) attention."
    )
    grid: int | None = Field(
        None, ge=1, description="Pool the feature map to GRID x GRID [default: as it comes]"
    )
    img_size: int | None = Field(None, ge=8, description="Input size [default: the encoder's]")
    embed_dim: int = Field(128, ge=1, description="Word embedding size.")
    hidden_dim: int = Field(256, ge=1, description="LSTM hidden size.")
    attention_dim: int = Field(128, ge=1, description="show_attend_tell: attention layer size.")
    dropout: float = Field(0.3, ge=0, lt=1, description="Dropout before the word layer.")
    min_word_count: int = Field(
        5, ge=1, description="Words seen fewer times in training captions become <unk>."
    )
    max_len: int = Field(20, ge=2, description="Longest caption (words) trained and decoded.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw or sgd.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate of the decoder.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (not on norms/biases).")
    momentum: float = Field(0.9, ge=0, description="SGD momentum.")
    scheduler: Literal["cosine", "step", "plateau", "none"] = Field(
        "cosine", description="LR schedule, stepped every batch (plateau: every epoch)."
    )
    warmup_epochs: float = Field(0.0, ge=0, description="Linear LR warm-up (epochs).")
    step_size: int = Field(10, ge=1, description="Epochs between decays for --scheduler step.")
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor for step and plateau.")
    fine_tune_encoder_after: int | None = Field(
        None,
        ge=0,
        description="Train the encoder from epoch N on, at --encoder-lr (0: from the start) "
        "[default: 0 without pretrained weights, else frozen]",
    )
    encoder_lr: float | None = Field(
        None,
        gt=0,
        description="Learning rate of a trained encoder [default: --lr from scratch, "
        "else --lr / 10]",
    )
    cache_features: bool = Field(
        True, description="Compute a frozen encoder's features once, cached on disk."
    )
    cache_dir: Path | None = Field(
        None, description="Feature cache folder [default: $PIXTELL_CACHE or ~/.cache/pixtell]"
    )
    cache: Literal["auto", "none", "ram", "disk"] = Field(
        "auto",
        description="A trained encoder's input images decoded once (uint8): ram, disk "
        "(memory-mapped under --cache-dir, reused across runs) or none; auto: ram when they "
        "fit 2 GiB, else disk, none for inputs above 128 px.",
    )
    attention_reg: float = Field(
        1.0, ge=0, description="Doubly stochastic attention regularisation (lambda)."
    )
    word_loss: float = Field(
        0.0,
        ge=0,
        description="Weight of an auxiliary loss: predict from the image which words its "
        "caption uses (helps an encoder trained from scratch; 0: off).",
    )
    reinforce_weight: float = Field(1.0, ge=0, description="Hard attention: REINFORCE weight.")
    entropy_weight: float = Field(0.01, ge=0, description="Hard attention: entropy bonus.")
    grad_clip: float = Field(5.0, ge=0, description="Clip the gradient norm (0: off).")
    beam_size: int = Field(3, ge=1, description="Beam size of validation decoding (1: greedy).")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of images for validation.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of images for testing.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Refuse larger images.")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> CaptionTrainConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"--val-fraction ({self.val_fraction}) + --test-fraction ({self.test_fraction}) "
                "must be below 1, leaving images to train on"
            )
        return self


# Names people bring from other tools, mapped to ours (for "did you mean" hints).
ALIASES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "max_epochs": "epochs",
    "image_size": "img_size",
    "imgsz": "img_size",
    "input_size": "img_size",
    "bs": "batch_size",
    "workers": "num_workers",
    "lr_scheduler": "scheduler",
    "sched": "scheduler",
    "arch": "model",
    "early_stopping_patience": "patience",
    "wd": "weight_decay",
    "gpus": "devices",
    "precision": "mixed_precision",
}


def flag_name(name: str) -> str:
    """How the user spells a setting on the command line."""
    return "DATA" if name == "data" else "--" + name.replace("_", "-")


def closest_setting(name: str, fields: Iterable[str]) -> str | None:
    """The valid setting a mistyped name most likely meant (or None)."""
    fields = list(fields)
    key = name.strip().lower().replace("-", "_")
    if key in fields:
        return key
    if ALIASES.get(key) in fields:
        return ALIASES[key]
    match = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    return match[0] if match else None


def read_settings_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML settings file; broken YAML names the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ValueError(f"{path}{where}: {problem}; fix the YAML syntax there") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of settings (key: value) at the top level")
    return {str(k): v for k, v in loaded.items()}


def _error_text(err: Mapping[str, Any], source: Mapping[str, str], fields: Iterable[str]) -> str:
    """One pydantic error as a sentence about a flag."""
    name = str(err["loc"][0]) if err.get("loc") else "?"
    where = source.get(name)
    typ, ctx = err["type"], err.get("ctx") or {}
    if typ == "extra_forbidden":
        hint = closest_setting(name, fields)
        text = f"unknown setting {name!r}" + (f" in {where}" if where else "")
        return text + (f"; did you mean {hint!r}?" if hint else "")
    flag = flag_name(name)
    if typ == "missing":
        return f"{flag} is required"
    bounds = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if typ in bounds:
        limit = next(iter(ctx.values()))
        limit = f"{limit:g}" if isinstance(limit, int | float) else limit
        text = f"{flag} must be {bounds[typ]} {limit}"
    elif typ == "literal_error":
        text = f"{flag} must be one of {ctx.get('expected', '')}"
    elif typ == "value_error":
        text = str(ctx.get("error", err["msg"]))
        return text + (f" (in {where})" if where else "")
    else:
        text = f"{flag}: {err['msg'].lower()}"
    got = err.get("input")
    text += f" (got {got!r}" + (f" from {where})" if where else ")")
    return text


def load_config(cls: type[C], config_file: Path | None = None, **overrides: Any) -> C:
    """Defaults < YAML file < overrides (``None`` overrides are ignored).

    Every problem becomes one ``ValueError`` line that names the flag (or the file and line).
    """
    data: dict[str, Any] = {}
    source: dict[str, str] = {}
    if config_file is not None:
        loaded = read_settings_file(Path(config_file))
        data.update(loaded)
        source.update(dict.fromkeys(loaded, str(config_file)))
    given = {k: v for k, v in overrides.items() if v is not None}
    data.update(given)
    for k in given:
        source.pop(k, None)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        fields = cls.model_fields.keys()
        texts = dict.fromkeys(_error_text(e, source, fields) for e in exc.errors())
        raise ValueError("; ".join(texts)) from None


def save_config(cfg: BaseModel, path: Path) -> None:
    """Write the resolved settings as YAML (enough to reproduce the run)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
