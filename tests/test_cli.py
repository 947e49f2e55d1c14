"""The CLI is a thin skin: flags reach the API, errors are one clear line, DDP works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pixtell import classify
from pixtell.cli import app

runner = CliRunner()
FLAGS = [
    "--model",
    "tinyvgg_a",
    "--img-size",
    "32",
    "--batch-size",
    "32",
    "--num-workers",
    "0",
    "--logger",
    "none",
    "--no-progress",
]


def test_help_lists_commands_and_flags() -> None:
    out = runner.invoke(app, ["--help"]).output
    assert "classify" in out and "demo" in out and "models" in out
    out = runner.invoke(app, ["classify", "train", "--help"], env={"COLUMNS": "200"}).output
    for flag in (
        "--scheduler",
        "--freeze-backbone",
        "--fine-tune-lr",
        "--resume",
        "--config",
        "--strategy",
        "--no-pretrained",
        "--weights",
        "--save-every-n-steps",
    ):
        assert flag in out


def test_models_table() -> None:
    res = runner.invoke(app, ["models", "--task", "classify"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "tinyvgg_c" in res.output and "resnet152" in res.output


def test_train_with_yaml_and_flags(shapes_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump({"data": str(shapes_dir), "epochs": 5, "seed": 3, "label_smoothing": 0.0})
    )
    res = runner.invoke(
        app,
        [
            "classify",
            "train",
            "--config",
            str(cfg),
            "--epochs",
            "1",
            "--out",
            str(tmp_path),
            "--name",
            "cli",
            *FLAGS,
        ],
    )
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((tmp_path / "classify" / "cli" / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["seed"] == 3 and saved["label_smoothing"] == 0.0


def test_user_errors_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    res = runner.invoke(app, ["classify", "train", str(tmp_path / "nope"), *FLAGS])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "nope" in res.output
    res = runner.invoke(app, ["classify", "evaluate", str(tmp_path)])
    assert res.exit_code == 2 and "not a pixtell run" in res.output


def test_predict_json_and_sort_undo(
    trained_run: classify.Run, shapes_dir: Path, tmp_path: Path
) -> None:
    images = sorted((shapes_dir / "square").iterdir())[:3]
    res = runner.invoke(
        app,
        ["classify", "predict", str(trained_run.dir), *map(str, images), "--json", "--topk", "2"],
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.splitlines() if x.startswith("{")]
    assert [x["path"] for x in lines] == [str(p) for p in images]
    assert all(len(x["topk"]) == 2 for x in lines)

    inbox = tmp_path / "inbox"
    shutil.copytree(shapes_dir / "square", inbox)
    n = len(list(inbox.iterdir()))
    sort_args = ["classify", "sort", str(inbox), "--model", str(trained_run.dir)]
    dry = runner.invoke(app, [*sort_args, "--out", str(tmp_path / "out"), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("→") == n and not (tmp_path / "out").exists()
    res = runner.invoke(
        app,
        [
            "classify",
            "sort",
            str(inbox),
            "--model",
            str(trained_run.dir),
            "--out",
            str(tmp_path / "out"),
            "--move",
        ],
    )
    assert res.exit_code == 0, res.output
    assert not list(inbox.iterdir())
    manifest = tmp_path / "out" / "sort-manifest.jsonl"
    res = runner.invoke(app, ["classify", "sort", "--undo", str(manifest)])
    assert res.exit_code == 0, res.output
    assert len(list(inbox.iterdir())) == n


def test_ddp_two_processes_on_cpu(shapes_dir: Path, tmp_path: Path) -> None:
    """A real 2-process DDP run (gloo on CPU) through the CLI, as a user would start it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PIXTELL_RUN_DIR", None)
    cmd = [
        sys.executable,
        "-m",
        "pixtell.cli",
        "classify",
        "train",
        str(shapes_dir),
        "--epochs",
        "1",
        "--out",
        str(tmp_path),
        "--name",
        "ddp",
        "--strategy",
        "ddp",
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        *FLAGS,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = sorted((tmp_path / "classify").iterdir())
    assert [r.name for r in runs] == ["ddp"], "worker processes made their own run directories"
    assert (runs[0] / "best.safetensors").is_file()
    assert "distributed over 2 processes" in proc.stdout
