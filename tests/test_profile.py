"""pixtell profile: parameter and GMAC counts against torchvision's published figures, the table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import get_model_weights

from pixtell.models import count_params
from pixtell.profile import (
    CSV_COLUMNS,
    count_macs,
    profile_models,
    resolve,
    table_rows,
    write_csv,
    write_html,
)


def _published(name: str) -> tuple[float, float]:
    """(parameters, GMACs) from torchvision's weight metadata (its ``_ops`` are GMACs)."""
    meta = get_model_weights(name).DEFAULT.meta
    return meta["num_params"], meta["_ops"]


@pytest.mark.parametrize(
    "name",
    ["resnet18", "mobilenet_v2", pytest.param("vit_b_16", marks=pytest.mark.slow)],
)
def test_params_and_gmacs_match_torchvision(name: str) -> None:
    params, gmacs = _published(name)
    subject = resolve(name)
    assert subject.img_size == 224
    assert count_params(subject.net) == pytest.approx(params, rel=0.02)
    macs = count_macs(subject.net, torch.zeros(1, 3, 224, 224))
    assert macs / 1e9 == pytest.approx(gmacs, rel=0.02)


def test_macs_of_a_hand_counted_network() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    # conv: 8 out x 16 positions x 27 inputs; linear: 128 x 10; per image
    per_image = 8 * 16 * 27 + 128 * 10
    assert count_macs(net, torch.zeros(3, 3, 4, 4)) == 3 * per_image


def test_rows_csv_and_html(tmp_path: Path) -> None:
    seen = []
    rows = profile_models(
        ["tinyvgg_a", "no_such_model"],
        img_size=32,
        batch_sizes=(1, 4),
        runs=3,
        warmup=1,
        threads=1,
        on_row=seen.append,
    )
    assert seen == rows
    good = [r for r in rows if not r.error]
    assert [r.batch_size for r in good] == [1, 4]
    for r in good:
        assert r.model == "tinyvgg_a" and r.img_size == 32 and r.threads == 1
        assert r.step_time_ms > 0 and r.p90_ms >= r.step_time_ms
        assert r.samples_per_sec == pytest.approx(r.batch_size / (r.step_time_ms / 1e3), rel=0.01)
        assert r.peak_mem_mb is not None and r.peak_mem_mb > 0
    assert good[0].gmacs == good[1].gmacs  # per image, whatever the batch
    (bad,) = [r for r in rows if r.error]
    assert "no_such_model" in bad.error and "tinyvgg_a" in bad.error

    path = write_csv(rows, tmp_path / "p.csv")
    with path.open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames[: len(CSV_COLUMNS)]) == CSV_COLUMNS
        first = next(reader)
    assert first["model"] == "tinyvgg_a" and first["batch_size"] == "1"
    html = write_html(rows, tmp_path / "p.html").read_text()
    assert "tinyvgg_a" in html and "no_such_model" in html
    assert len(table_rows(rows)) == len(rows)


def test_onnx_backend_row(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    rows = profile_models(
        ["tinyvgg_a"], img_size=32, batch_sizes=(2,), backends=("torch", "onnx"), runs=2
    )
    assert [r.backend for r in rows] == ["torch", "onnx"]
    assert rows[1].error is None and rows[1].peak_mem_mb is None
    assert rows[0].gmacs == rows[1].gmacs and rows[1].samples_per_sec > 0
    det = profile_models(["tiny_fcos"], img_size=64, batch_sizes=(2,), backends=("onnx",), runs=2)
    assert det[0].task == "detect" and det[0].error is None and det[0].samples_per_sec > 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="backend"):
        profile_models(["tinyvgg_a"], backends=("tflite",))
    with pytest.raises(ValueError, match="at least 1"):
        profile_models(["tinyvgg_a"], batch_sizes=(0,))


def test_cli_profile(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pixtell.cli import app

    runner = CliRunner()
    out = tmp_path / "prof.csv"
    args = ["profile", "tinyvgg_a", "--img-size", "32", "--batch-sizes", "1,2", "--runs", "2"]
    res = runner.invoke(app, [*args, "--csv", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "tinyvgg_a" in res.output and "GMACs" in res.output
    with out.open() as fh:
        assert [r["batch_size"] for r in csv.DictReader(fh)] == ["1", "2"]
    before = out.read_text()
    refused = runner.invoke(app, [*args, "--csv", str(out)])
    assert refused.exit_code == 2 and "--force" in refused.output
    assert out.read_text() == before
    bad = runner.invoke(app, ["profile", "no_such_model", "--runs", "1"])
    assert bad.exit_code == 1 and "no_such_model" in bad.output


def test_runs_of_each_task_use_their_own_input(tmp_path: Path) -> None:
    from pixtell.caption.vocab import Vocabulary
    from pixtell.models import create, save_model

    clf = tmp_path / "clf"
    clf.mkdir()
    meta = {"task": "classify", "arch": "tinyvgg_a", "num_classes": 2, "class_names": ["a", "b"]}
    save_model(create("tinyvgg_a", num_classes=2), clf, meta | {"img_size": 40})
    cap = tmp_path / "cap"
    cap.mkdir()
    Vocabulary(["a", "b"]).save(cap)
    kw = {"embed_dim": 16, "hidden_dim": 16}
    cap_meta = {"task": "caption", "arch": "show_tell", "num_classes": 6, "arch_kwargs": kw}
    save_model(
        create("show_tell", "caption", num_classes=6, **kw),
        cap,
        cap_meta | {"img_size": 48, "max_len": 5, "vocab": "vocab.json"},
    )
    rows = profile_models([clf, cap], batch_sizes=(1,), runs=2, warmup=1, memory=False)
    assert [(r.task, r.img_size, r.error) for r in rows] == [
        ("classify", 40, None),
        ("caption", 48, None),
    ]
    assert all(r.gmacs > 0 and r.peak_mem_mb is None for r in rows)
