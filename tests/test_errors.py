"""Every user mistake is one line, exit code 2, no traceback, and leaves no half-made run."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pixtell import classify
from pixtell.cli import app

runner = CliRunner()
FAST = ["--model", "tinyvgg_a", "--img-size", "32", "--num-workers", "0", "--no-progress"]


def _one_line_error(args: list[str], *, cwd: Path | None = None) -> str:
    res = runner.invoke(app, args)
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def _no_runs(out: Path) -> bool:
    return not (out / "classify").exists() or not any((out / "classify").iterdir())


def test_broken_yaml_names_file_and_line(shapes_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 3\nlr: [0.1\nseed: 2\n")
    line = _one_line_error(["classify", "train", str(shapes_dir), "--config", str(cfg)])
    assert "run.yaml line" in line


def test_unknown_setting_suggests_the_valid_name(shapes_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("learning_rate: 0.1\n")
    out = tmp_path / "out"
    line = _one_line_error(
        ["classify", "train", str(shapes_dir), "--config", str(cfg), "--out", str(out)]
    )
    assert "unknown setting 'learning_rate'" in line and "did you mean 'lr'?" in line
    assert _no_runs(out)


def test_invalid_values_are_named_as_flags(shapes_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = _one_line_error(["classify", "train", str(shapes_dir), "--lr", "-1", "--out", str(out)])
    assert "--lr must be > 0" in line
    line = _one_line_error(
        ["classify", "train", str(shapes_dir), "--val-fraction", "0.5", "--test-fraction", "0.5"]
    )
    assert "--val-fraction" in line and "--test-fraction" in line
    assert _no_runs(out)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_missing_logger_package_leaves_no_run(shapes_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = _one_line_error(
        ["classify", "train", str(shapes_dir), *FAST, "--logger", "wandb", "--out", str(out)]
    )
    assert "pixtell[wandb]" in line
    assert _no_runs(out)


def test_one_class_folder_is_refused(shapes_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "one"
    shutil.copytree(shapes_dir / "star", data / "star")
    out = tmp_path / "out"
    line = _one_line_error(["classify", "train", str(data), *FAST, "--out", str(out)])
    assert "at least two class folders" in line
    assert _no_runs(out)


def test_topk_zero_and_missing_run(trained_run: classify.Run, tmp_path: Path) -> None:
    img = next((Path(trained_run.config["data"]) / "star").iterdir())
    res = runner.invoke(app, ["classify", "predict", str(trained_run.dir), str(img), "--topk", "0"])
    assert res.exit_code == 2 and "Traceback" not in res.output and "--topk" in res.output
    line = _one_line_error(["classify", "evaluate", str(tmp_path / "no-such-run")])
    assert "does not exist" in line and "runs" in line


def test_missing_run_lists_the_runs_under_runs(
    trained_run: classify.Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "classify").mkdir(parents=True)
    shutil.copytree(trained_run.dir, tmp_path / "runs" / "classify" / "mine")
    line = _one_line_error(["classify", "evaluate", "runs/classify/typo"])
    assert "runs/classify/mine" in line


def test_sort_names_the_missing_argument(trained_run: classify.Run, tmp_path: Path) -> None:
    line = _one_line_error(["classify", "sort", str(tmp_path), "--model", str(trained_run.dir)])
    assert "--out DIR" in line and "INBOX" not in line.split("(")[0]
    line = _one_line_error(["classify", "sort", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "--model RUN" in line.split("(")[0]
    line = _one_line_error(
        ["classify", "sort", "--model", str(trained_run.dir), "--out", str(tmp_path / "o")]
    )
    assert "INBOX" in line.split("(")[0]


def test_resume_errors_are_one_line(trained_run: classify.Run, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(trained_run.dir, run)
    line = _one_line_error(["classify", "train", "--resume", str(run), "--model", "tinyvgg_b"])
    assert "cannot change" in line and "--model (recorded: 'tinyvgg_a')" in line
    line = _one_line_error(["classify", "train", "--resume", str(run)])
    assert "already finished" in line


def test_help_fits_80_columns_and_shows_real_defaults() -> None:
    res = runner.invoke(app, ["classify", "train", "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0
    assert "PydanticUndefined" not in res.output and "…" not in res.output
    flat = " ".join(res.output.split())
    assert "--logger" in flat and "[default: tensorboard]" in flat
    assert "--no-freeze-backbone" in res.output and "mobilenet_v3_small" in res.output
    assert max(len(x) for x in res.output.splitlines()) <= 80
    assert runner.invoke(app, ["--version"]).output.startswith("pixtell ")


def test_ctrl_c_during_sort_prints_the_undo_command(
    trained_run: classify.Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixtell.classify.sort import Placement, SortInterrupted, SortResult

    manifest = tmp_path / "out" / "sort-manifest.jsonl"
    done = SortResult(manifest, {"star": 1}, [], dry_run=False, moved=True)
    done.placements.append(Placement(tmp_path / "a.png", tmp_path / "out/star/a.png", "star", 0.9))

    def interrupted(*args: object, **kwargs: object) -> None:
        raise SortInterrupted(done)

    monkeypatch.setattr(classify, "sort", interrupted)
    res = runner.invoke(
        app, ["classify", "sort", str(tmp_path), "--model", str(trained_run.dir), "--out", "o"]
    )
    assert res.exit_code == 130 and "1 files moved so far" in res.output
    assert f"pixtell classify sort --undo {manifest}" in res.output


def test_max_pixels_is_recorded_and_honoured(trained_run: classify.Run) -> None:
    import json

    meta = json.loads((trained_run.dir / "model.json").read_text())
    assert meta["max_pixels"] == trained_run.config["max_pixels"]
    img = next((Path(trained_run.config["data"]) / "star").iterdir())
    (ok,) = classify.predict(trained_run, [img])
    (refused,) = classify.predict(trained_run, [img], max_pixels=100)
    assert ok.error is None and refused.error and "pixels" in refused.error
