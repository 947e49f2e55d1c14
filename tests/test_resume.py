"""Resume you can trust: refused changes, exact continuation, plateau state, moved runs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from pixtell import classify
from pixtell.engine import TrainingInterrupted
from tests.conftest import FAST


@pytest.fixture(scope="module")
def one_epoch_run(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> classify.Run:
    out = tmp_path_factory.mktemp("resume-runs")
    return classify.train(shapes_dir, epochs=1, out=out, name="base", **FAST)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _epoch_values(run_dir: Path, key: str) -> dict[int, float]:
    return {int(r["epoch"]): float(r[key]) for r in _rows(run_dir) if r.get(key)}


@pytest.mark.parametrize(
    "change",
    [
        {"model": "tinyvgg_b"},
        {"seed": 7},
        {"img_size": 40},
        {"batch_size": 8},
        {"lr": 0.1},
        {"optimizer": "sgd"},
        {"scheduler": "step"},
        {"augment": "none"},
        {"label_smoothing": 0.0},
        {"freeze_backbone": True},
        {"val_fraction": 0.3},
    ],
)
def test_resume_refuses_run_defining_changes(one_epoch_run: classify.Run, change: dict) -> None:
    config = (one_epoch_run.dir / "config.yaml").read_bytes()
    files = sorted(p.name for p in one_epoch_run.dir.iterdir())
    (name, value) = next(iter(change.items()))
    recorded = yaml.safe_load(config)[name]
    with pytest.raises(ValueError, match="cannot change") as info:
        classify.train(resume=one_epoch_run.dir, epochs=3, **change)
    message = str(info.value)
    assert "--" + name.replace("_", "-") in message and repr(recorded) in message
    assert "\n" not in message
    assert (one_epoch_run.dir / "config.yaml").read_bytes() == config
    assert sorted(p.name for p in one_epoch_run.dir.iterdir()) == files


def test_resume_refuses_other_data_and_config_file_changes(
    one_epoch_run: classify.Run, tmp_path: Path
) -> None:
    config = (one_epoch_run.dir / "config.yaml").read_bytes()
    other = tmp_path / "other"
    shutil.copytree(one_epoch_run.config["data"], other)
    with pytest.raises(ValueError, match="DATA"):
        classify.train(other, resume=one_epoch_run.dir, epochs=3)
    settings = tmp_path / "run.yaml"
    settings.write_text("lr: 0.5\nepochs: 3\n")
    with pytest.raises(ValueError, match=r"--lr .*run\.yaml"):
        classify.train(resume=one_epoch_run.dir, config_file=settings)
    for bad in ({"out": tmp_path}, {"name": "x"}):
        with pytest.raises(ValueError, match="cannot be used with --resume"):
            classify.train(resume=one_epoch_run.dir, epochs=3, **bad)
    assert (one_epoch_run.dir / "config.yaml").read_bytes() == config


def test_finished_run_needs_more_epochs(one_epoch_run: classify.Run) -> None:
    with pytest.raises(ValueError, match="already finished all 1 epochs"):
        classify.train(resume=one_epoch_run.dir)
    with pytest.raises(ValueError, match="already finished"):
        classify.train(resume=one_epoch_run.dir, epochs=1)


class _Interrupt(L.Callback):
    """Presses Ctrl-C in the middle of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int = 1) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise KeyboardInterrupt


def test_interrupted_and_resumed_equals_uninterrupted_with_default_workers(
    shapes_dir: Path, tmp_path: Path
) -> None:
    kw = {**FAST, "num_workers": None, "epochs": 3}  # None: the default worker count
    straight = classify.train(shapes_dir, out=tmp_path, name="straight", **kw)
    with pytest.raises(TrainingInterrupted) as info:
        classify.train(shapes_dir, out=tmp_path, name="cut", callbacks=[_Interrupt(1)], **kw)
    cut = info.value.run
    assert "--resume" in info.value.command and str(cut.dir) in info.value.command
    # an interrupted run is still usable: weights exported, evaluation works
    assert (cut.dir / "best.safetensors").is_file()
    assert classify.evaluate(cut).metrics["n"] > 0
    resumed = classify.train(resume=cut.dir)
    for key in ("val_loss", "val_acc", "train_loss_epoch"):
        a, b = _epoch_values(straight.dir, key), _epoch_values(resumed.dir, key)
        assert sorted(a) == [0, 1, 2] and a.keys() == b.keys(), key
        for e in a:
            assert a[e] == pytest.approx(b[e], abs=1e-6), (key, e)
    steps = [(r["epoch"], r["step"], r.get("train_loss_step")) for r in _rows(resumed.dir)]
    logged = [s for s in steps if s[2]]
    assert len(logged) == len(set(logged)), "metrics.csv holds duplicated rows"
    entries = [json.loads(x) for x in (resumed.dir / "resumes.jsonl").read_text().splitlines()]
    assert entries[-1]["from_epoch"] == 1


def test_new_patience_takes_effect_and_resume_is_recorded(shapes_dir: Path, tmp_path: Path) -> None:
    run = classify.train(shapes_dir, epochs=1, patience=5, out=tmp_path, **FAST)
    classify.train(resume=run.dir, epochs=2, patience=9)
    ckpt = torch.load(run.dir / "last.ckpt", weights_only=True)
    es = next(v for k, v in ckpt["callbacks"].items() if "EarlyStopping" in k)
    assert es["patience"] == 9
    saved = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert saved["patience"] == 9 and saved["epochs"] == 2
    entry = json.loads((run.dir / "resumes.jsonl").read_text().splitlines()[-1])
    assert entry["from_epoch"] == 1
    assert entry["changed"] == {"epochs": [1, 2], "patience": [5, 9]}


def _lrs(run_dir: Path) -> list[tuple[int, float]]:
    key = "lr-AdamW/pg1"
    return [(int(r["step"]), float(r[key])) for r in _rows(run_dir) if r.get(key)]


def test_plateau_keeps_warmup_fine_tune_lr_and_its_state_in_checkpoints(
    shapes_dir: Path, tmp_path: Path
) -> None:
    kw = {**FAST, "lr": 0.01, "scheduler": "plateau", "gamma": 0.5, "warmup_epochs": 1.0}
    run = classify.train(
        shapes_dir,
        epochs=2,
        freeze_backbone=True,
        fine_tune_epochs=1,
        fine_tune_lr=0.002,
        out=tmp_path,
        **kw,
    )
    lrs = _lrs(run.dir)
    steps_per_epoch = len(lrs) // 3
    assert lrs[0][1] < 0.01 * 0.75, "no warm-up"
    stage2 = [lr for step, lr in lrs if step >= 2 * steps_per_epoch]
    assert stage2 and max(stage2) <= 0.002 + 1e-9, "--fine-tune-lr ignored"
    ckpt = torch.load(run.dir / "last.ckpt", weights_only=True)
    sched = ckpt["lr_schedulers"][0]
    # stepped once per validation, before the epoch's checkpoint was written
    assert sched["plateau_state"]["last_epoch"] == ckpt["epoch"] + 1
    assert 0 < sched["plateau_scale"] <= 1


class _Spoil(L.Callback):
    """Ruins the weights before validation, so the epoch's score is far worse."""

    def on_validation_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        with torch.no_grad():
            for p in pl_module.parameters():
                p.add_(torch.randn_like(p) * 5)


def test_moved_run_keeps_its_best_checkpoint(shapes_dir: Path, tmp_path: Path) -> None:
    run = classify.train(shapes_dir, epochs=2, out=tmp_path / "a", **FAST)
    best_before = torch.load(run.dir / "best.ckpt", weights_only=True)
    moved = tmp_path / "b" / "renamed"
    moved.parent.mkdir()
    shutil.move(run.dir, moved)
    classify.train(resume=moved, epochs=3, callbacks=[_Spoil()])
    best_after = torch.load(moved / "best.ckpt", weights_only=True)
    assert best_after["epoch"] == best_before["epoch"], "a worse epoch replaced best.ckpt"
    results = json.loads((moved / "results.json").read_text())
    worst = max(_epoch_values(moved, "val_loss").values())
    assert results["best_val_loss"] < worst


def test_more_epochs_on_a_finished_two_stage_run_keep_the_stage_boundary(
    shapes_dir: Path, tmp_path: Path
) -> None:
    run = classify.train(
        shapes_dir, epochs=1, freeze_backbone=True, fine_tune_epochs=1, out=tmp_path, **FAST
    )
    resumed = classify.train(resume=run.dir, epochs=2)
    assert resumed.config["epochs"] == 1 and resumed.config["fine_tune_epochs"] == 2
    assert resumed.best_metrics["epochs_completed"] == 3
