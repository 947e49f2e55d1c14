"""Training: run directory, safe checkpoints, resume, two-stage fine-tuning, loggers."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from pixtell import classify
from pixtell.classify.module import ClassifierModule
from pixtell.data.folders import read_split
from tests.conftest import FAST


def test_run_directory_holds_everything(trained_run: classify.Run) -> None:
    d = trained_run.dir
    for name in (
        "config.yaml",
        "split.json",
        "last.ckpt",
        "best.ckpt",
        "best.safetensors",
        "model.json",
        "metrics.csv",
        "curves.png",
        "results.json",
    ):
        assert (d / name).is_file(), name
    meta = json.loads((d / "model.json").read_text())
    assert meta["arch"] == "tinyvgg_a" and meta["img_size"] == 32
    assert meta["class_names"] == read_split(d / "split.json").classes
    assert trained_run.config["seed"] == 0 and trained_run.config["epochs"] == 2
    weights = load_file(d / "best.safetensors")
    assert any(k.startswith("classifier.") for k in weights)


def test_checkpoints_load_without_pickle(trained_run: classify.Run) -> None:
    for name in ("last.ckpt", "best.ckpt"):
        ckpt = torch.load(trained_run.dir / name, map_location="cpu", weights_only=True)
        assert ckpt["epoch"] >= 0 and "state_dict" in ckpt


def test_lr_schedule_is_stepped(trained_run: classify.Run) -> None:
    with open(trained_run.dir / "metrics.csv", newline="") as f:
        lrs = [float(r["lr-AdamW/pg1"]) for r in csv.DictReader(f) if r.get("lr-AdamW/pg1")]
    assert len(set(lrs)) > 2, "the learning rate never changed"


class _Snapshot(L.Callback):
    """Records parameters, BN statistics and trainable counts at the end of each epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: ClassifierModule) -> None:
        net = module.net
        self.epochs.append(
            {
                "conv": net.features[0].weight.detach().clone(),
                "bn_mean": net.features[1].running_mean.clone(),
                "head": net.classifier[-1].weight.detach().clone(),
                "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
            }
        )

    def on_train_start(self, trainer: L.Trainer, module: ClassifierModule) -> None:
        self.start = {
            "conv": module.net.features[0].weight.detach().clone(),
            "bn_mean": module.net.features[1].running_mean.clone(),
            "head": module.net.classifier[-1].weight.detach().clone(),
        }


def test_fine_tune_stages_freeze_then_unfreeze(shapes_dir: Path, tmp_path: Path) -> None:
    snap = _Snapshot()
    classify.train(
        shapes_dir,
        epochs=1,
        fine_tune_epochs=1,
        freeze_backbone=True,
        out=tmp_path,
        callbacks=[snap],
        **FAST,
    )
    stage1, stage2 = snap.epochs
    assert torch.equal(stage1["conv"], snap.start["conv"]), "frozen backbone changed"
    assert torch.equal(stage1["bn_mean"], snap.start["bn_mean"]), "frozen BN statistics drifted"
    assert not torch.equal(stage1["head"], snap.start["head"]), "head did not train"
    assert stage1["trainable"] < stage2["trainable"]
    assert not torch.equal(stage2["conv"], stage1["conv"]), "stage 2 did not unfreeze"
    assert not torch.equal(stage2["bn_mean"], stage1["bn_mean"])


def test_resume_continues_epochs_early_stopping_and_metrics(
    shapes_dir: Path, tmp_path: Path
) -> None:
    run = classify.train(shapes_dir, epochs=2, patience=50, out=tmp_path, **FAST)
    before = torch.load(run.dir / "last.ckpt", weights_only=True)
    es_key = next(k for k in before["callbacks"] if "EarlyStopping" in k)
    rows_before = (run.dir / "metrics.csv").read_text().splitlines()

    resumed = classify.train(resume=run.dir, epochs=3)
    after = torch.load(resumed.dir / "last.ckpt", weights_only=True)
    assert resumed.dir == run.dir
    assert before["epoch"] == 1 and after["epoch"] == 2  # one more epoch, not three
    assert after["global_step"] > before["global_step"]
    es_before, es_after = before["callbacks"][es_key], after["callbacks"][es_key]
    # the counter carried on: it either grew by one or was reset by an improvement
    assert es_after["wait_count"] in (es_before["wait_count"] + 1, 0)
    if es_after["wait_count"] == 0:
        assert es_after["best_score"] < es_before["best_score"]
    with open(run.dir / "metrics.csv", newline="") as f:
        epochs = {int(r["epoch"]) for r in csv.DictReader(f) if r.get("val_loss")}
    assert epochs == {0, 1, 2}, "metrics.csv lost the first epochs on resume"
    assert (run.dir / "metrics.csv").read_text().splitlines()[1 : len(rows_before)] == rows_before[
        1:
    ]
    assert resumed.config["epochs"] == 3


def test_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        classify.train(resume=tmp_path)


def test_balanced_sampler_and_class_weights_train(shapes_dir: Path, tmp_path: Path) -> None:
    for balance in ("weights", "sampler"):
        run = classify.train(
            shapes_dir, epochs=1, balance=balance, out=tmp_path, max_samples_per_class=6, **FAST
        )
        assert (run.dir / "best.safetensors").is_file()
        split = read_split(run.dir / "split.json")
        counts = {c: 0 for c in range(len(split.classes))}
        for s in split.splits["train"] + split.splits["val"] + split.splits["test"]:
            counts[s.label] += 1
        assert max(counts.values()) <= 6


def test_bad_files_are_reported_and_skipped(shapes_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    (data / "star" / "empty.png").write_bytes(b"")
    (data / "star" / "notes.txt").write_text("hello")
    good = next((data / "circle").iterdir()).read_bytes()
    (data / "circle" / "cut.png").write_bytes(good[: len(good) // 2])
    run = classify.train(data, epochs=1, out=tmp_path / "runs", **FAST)
    split = read_split(run.dir / "split.json")
    skipped = {p.name for p, _ in split.skipped}
    assert {"empty.png", "notes.txt", "cut.png"} <= skipped
    used = {s.path.name for part in split.splits.values() for s in part}
    assert not used & {"empty.png", "notes.txt", "cut.png"}


def test_step_checkpoints_tensorboard_and_mixed_precision(shapes_dir: Path, tmp_path: Path) -> None:
    kw = {**FAST, "logger": ["tensorboard"]}
    run = classify.train(
        shapes_dir, epochs=1, save_every_n_steps=1, mixed_precision=True, out=tmp_path, **kw
    )
    steps = sorted(p.name for p in (run.dir / "checkpoints").glob("step-*.ckpt"))
    assert len(steps) >= 2
    assert list((run.dir / "tensorboard").glob("events.out.tfevents.*"))
    assert run.config["mixed_precision"] is True


def test_offline_pretrained_fails_before_making_a_run(
    shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error

    from pixtell.models import WeightsUnavailableError

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    # torchvision imported the name into its own module; patching torch.hub alone would
    # pass only because this machine happens to be offline
    import torchvision.models._api as tv_api

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    kw = {**FAST, "model": "mobilenet_v3_small"}
    with pytest.raises(WeightsUnavailableError, match="--no-pretrained"):
        classify.train(shapes_dir, epochs=1, pretrained=True, out=tmp_path, **kw)
    assert not (tmp_path / "classify").exists() or not any((tmp_path / "classify").iterdir())
