"""Detection through the shared run flow: train, evaluate, predict, resume rules, the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from pixtell import detect
from pixtell.cli import app
from pixtell.data.demo import SHAPES, make_detection_scenes
from pixtell.detect.data import read_split, to_coco_dict
from pixtell.detect.evaluate import Scored, match_detections, without_difficult
from pixtell.detect.train import arch_kwargs

FAST = dict(img_size=64, batch_size=4, num_workers=0, logger=["none"], progress=False, epochs=1)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("det") / "scenes"
    return make_detection_scenes(out, n_images=16, img_size=64, seed=3, progress=False)


@pytest.fixture(scope="module")
def run(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> detect.Run:
    out = tmp_path_factory.mktemp("runs")
    return detect.train(
        scenes, out=out, name="flow", val_fraction=0.25, save_every_n_steps=1, **FAST
    )


def _pycocotools(gt_file: Path, results_file: Path) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        dt = gt.loadRes(str(results_file))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _same(ours: float | None, ref: float) -> bool:
    return (ours is None and ref < 0) or (
        ours is not None and math.isclose(ours, ref, abs_tol=1e-6)
    )


def test_train_writes_a_complete_run(run: detect.Run) -> None:
    files = {p.name for p in run.dir.iterdir()}
    assert {"best.safetensors", "model.json", "split.json", "config.yaml", "last.ckpt"} <= files
    meta = json.loads((run.dir / "model.json").read_text())
    assert meta["task"] == "detect" and meta["arch"] == "tiny_fcos"
    assert meta["class_names"] == list(SHAPES) and meta["arch_kwargs"] == {"img_size": 64}
    assert 0 <= run.best_metrics["best_val_map"] <= 1
    header = (run.dir / "metrics.csv").read_text().splitlines()[0].split(",")
    # every FCOS loss component is logged on its own
    for part in ("classification", "bbox_regression", "bbox_ctrness"):
        assert f"train_loss_{part}" in header
    ds, splits = read_split(run.dir / "split.json")
    assert sorted(sum(splits.values(), [])) == list(range(16))
    assert len(splits["val"]) == 4


def test_evaluate_matches_pycocotools_and_writes_its_files(run: detect.Run) -> None:
    res = detect.evaluate(run, conf=0.05)
    assert res.dir == run.dir / "eval"
    for name in ("confusion_matrix.png", "pr_curves.png", "preds.png", "report.html"):
        assert (res.dir / name).is_file(), name
    assert (run.dir / "report.html").is_file()
    saved = json.loads((res.dir / "metrics.json").read_text())
    ref = _pycocotools(res.dir / "ground_truth.json", res.dir / "predictions.json")
    keys = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
    keys += ("mar_1", "mar_10", "mar_100")
    for k, r in zip(keys, ref[:9], strict=True):
        assert _same(saved[k], r), (k, saved[k], r)
    # the ground truth scored is the test split as recorded in split.json
    ds, splits = read_split(run.dir / "split.json")
    expected = to_coco_dict(ds, splits["test"])["annotations"]
    written = json.loads((res.dir / "ground_truth.json").read_text())["annotations"]
    flat = [v for a in written for v in a["bbox"]]
    assert flat == pytest.approx([v for a in expected for v in a["bbox"]])
    # confusion matrix: one row per class plus background; every box counted once in its row
    cm = np.asarray(saved["confusion_matrix"])
    assert cm.shape == (len(SHAPES) + 1, len(SHAPES) + 1)
    assert cm[:-1].sum() == saved["n_boxes"] == len(expected)
    assert cm[-1, -1] == 0


def test_evaluate_files_scores_any_coco_pair(run: detect.Run, tmp_path: Path) -> None:
    first = detect.evaluate(run, split="val")
    assert first.dir == run.dir / "eval-val"
    gt, dets = first.dir / "ground_truth.json", first.dir / "predictions.json"
    res = detect.evaluate_files(gt, dets, tmp_path / "files")
    ref = _pycocotools(gt, dets)
    assert _same(res.metrics["map"], ref[0]) and _same(res.metrics["map_50"], ref[1])
    assert res.metrics["confusion_matrix"] == first.metrics["confusion_matrix"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="choose a new"):
        detect.evaluate_files(gt, dets, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_all_checkpoints_are_scored_by_step(run: detect.Run, tmp_path: Path) -> None:
    res = detect.evaluate(run, split="val", out=tmp_path / "ckpts", all_checkpoints=True)
    rows = res.metrics["checkpoints"]
    names = [r["checkpoint"] for r in rows]
    assert "last.ckpt" in names and "best.ckpt" in names
    assert sum(n.startswith("checkpoints/") for n in names) == 2  # --save-every-n-steps 1
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows) == [1, 2, 2, 2]
    # one epoch of two steps: the step-2 checkpoint, last and best hold the exported weights
    for r in rows[1:]:
        assert _same(r["map_50"], res.metrics["map_50"]), r
        assert _same(r["map"], res.metrics["map"]), r
    assert (tmp_path / "ckpts" / "map_over_training.png").is_file()
    assert len(json.loads((tmp_path / "ckpts" / "checkpoints.json").read_text())) == 4


def test_val_map_of_training_equals_evaluating_the_val_split(run: detect.Run) -> None:
    res = detect.evaluate(run, split="val", out=run.dir / "eval-val-check")
    assert _same(run.best_metrics["val_map"], res.metrics["map"] or 0.0)
    assert _same(run.best_metrics["val_map_50"], res.metrics["map_50"] or 0.0)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(scenes: Path, tmp_path: Path) -> None:
    """A real 2-process DDP run (gloo on CPU): validation mAP gathers both ranks' images."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PIXTELL_RUN_DIR", None)
    flags = ["--img-size", "64", "--batch-size", "2", "--num-workers", "0"]
    flags += ["--logger", "none", "--no-progress", "--epochs", "2", "--val-fraction", "0.3"]
    cmd = [sys.executable, "-m", "pixtell.cli", "detect", "train", str(scenes), *flags]
    cmd += ["--out", str(tmp_path), "--name", "ddp", "--strategy", "ddp", "--devices", "2"]
    cmd += ["--accelerator", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "distributed over 2 processes" in proc.stdout
    assert [r.name for r in (tmp_path / "detect").iterdir()] == ["ddp"]
    run = detect.Run.load(tmp_path / "detect" / "ddp")
    _, splits = read_split(run.dir / "split.json")
    assert len(splits["val"]) == 5  # odd: the distributed sampler pads one rank with a repeat
    res = detect.evaluate(run, split="val", out=tmp_path / "eval")
    # the best checkpoint's val_map (both ranks, duplicates dropped) equals scoring it alone
    assert _same(run.best_metrics["best_val_map"], res.metrics["map"] or 0.0)


def test_evaluate_files_edge_cases_match_pycocotools(tmp_path: Path) -> None:
    """An image without ground truth, one without detections, a class never detected."""
    gt = {
        "images": [
            {"id": i, "width": 64, "height": 64, "file_name": f"{i}.png"} for i in (1, 2, 3)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 7, "name": "c"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "area": 100},
            {"id": 3, "image_id": 3, "category_id": 7, "bbox": [5, 5, 20, 20], "area": 400},
        ],
    }
    for a in gt["annotations"]:
        a["iscrowd"] = 0
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [21, 21, 10, 10], "score": 0.8},  # IoU .68
        {"image_id": 1, "category_id": 1, "bbox": [40, 40, 10, 10], "score": 0.3},
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.6},
        {"image_id": 1, "category_id": 2, "bbox": [50, 0, 5, 5], "score": 0.1},  # below conf
    ]
    gt_file, dets_file = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_file.write_text(json.dumps(gt))
    dets_file.write_text(json.dumps(dets))
    res = detect.evaluate_files(gt_file, dets_file, tmp_path / "out", conf=0.25, iou=0.5)
    ref = _pycocotools(gt_file, dets_file)
    keys = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
    for k, r in zip(keys + ("mar_1", "mar_10", "mar_100"), ref[:9], strict=True):
        saved = json.loads((tmp_path / "out" / "metrics.json").read_text())[k]
        assert _same(saved, r), (k, saved, r)
    assert res.metrics["per_class"]["c"] == 0.0
    # rows true a, b, c, background; columns predicted a, b, c, background (by hand)
    assert res.metrics["confusion_matrix"] == [
        [1, 0, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 1],
        [1, 1, 0, 0],
    ]


def test_difficult_boxes_are_neither_missed_nor_false_positives() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=float)
    scored = Scored(
        images=[{"id": 1, "width": 64, "height": 64}],
        gt_boxes=[gt],
        gt_labels=[np.array([0, 1])],
        boxes=[boxes],
        labels=[np.array([0, 0, 1])],
        scores=[np.array([0.9, 0.8, 0.7])],
        paths=[None],
        ignore=[np.array([False, True])],
    )
    plain = without_difficult(scored, 0.5)
    assert plain.gt_boxes[0].tolist() == [[0, 0, 10, 10]]
    # the detection on the difficult box goes, the one far from every box stays
    assert plain.boxes[0].tolist() == [[0, 0, 10, 10], [40, 40, 50, 50]]
    assert plain.labels[0].tolist() == [0, 1] and plain.scores[0].tolist() == [0.9, 0.7]


def test_match_detections_by_class_and_score() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    gl = np.array([0, 1])
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float)
    labels = np.array([0, 0, 0, 1])
    scores = np.array([0.5, 0.9, 0.8, 0.7])
    tp, found = match_detections(gt, gl, boxes, labels, scores, 0.5)
    # the higher-scored overlapping box takes the first gt; the exact one is then a duplicate;
    # the right place with the wrong class and a box far away are false positives
    assert tp.tolist() == [False, True, False, False]
    assert found.tolist() == [True, False]


def test_predict_writes_results_and_reports_unreadable_files(
    run: detect.Run, scenes: Path, tmp_path: Path
) -> None:
    good = sorted((scenes / "images").glob("*.png"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    preds = detect.predict(run, [*good, broken, tmp_path / "missing.png"], conf=0.05)
    by_name = {p.path.name: p for p in preds}
    assert by_name["broken.png"].error and by_name["missing.png"].error
    results = json.loads(preds.results_json.read_text())
    for p in good:
        d = by_name[p.name]
        assert d.error is None and d.drawn is not None
        assert Image.open(d.drawn).size == (512, 512)  # 64 px scenes drawn larger
        assert all(s >= 0.05 for s in d.scores)
        assert len(d.boxes) == len(d.labels) == len(d.scores)
        assert set(d.labels) <= set(SHAPES)
        mine = [r for r in results if r["file_name"] == str(p)]
        assert len(mine) == len(d.boxes)
    assert all(r["file_name"] not in (str(broken),) for r in results)
    again = detect.predict(run, good[:1], conf=0.05)
    assert again.dir != preds.dir  # never writes over an earlier prediction


def _edit_first_box(xml_file: Path, **values: float) -> None:
    tree = ET.parse(xml_file)
    box = tree.getroot().find("object/bndbox")
    for tag, v in values.items():
        box.find(tag).text = str(v)
    tree.write(xml_file)


def test_voc_with_an_empty_image_and_bad_boxes_trains_and_evaluates(
    scenes: Path, tmp_path: Path
) -> None:
    voc = detect.convert(scenes, tmp_path / "voc", to="voc")
    xmls = sorted((voc / "Annotations").glob("*.xml"))
    tree = ET.parse(xmls[0])
    for obj in tree.getroot().findall("object"):
        tree.getroot().remove(obj)
    tree.write(xmls[0])
    _edit_first_box(xmls[1], xmax=500)  # outside the 64 px image
    _edit_first_box(xmls[2], xmin=20, xmax=19)  # VOC max is inclusive: zero width
    run = detect.train(voc, out=tmp_path / "runs", val_fraction=0.25, test_fraction=0.25, **FAST)
    ds, splits = read_split(run.dir / "split.json")
    reasons = " ".join(r for _, r in ds.problems)
    assert "outside" in reasons and "zero or negative size" in reasons
    assert len(ds.images) == 16 and len(ds.images[0].boxes) == 0  # kept as a negative
    assert ds.images[1].boxes[:, 2].max() <= 64
    res = detect.evaluate(run)
    assert res.metrics["n_images"] == len(splits["test"])
    assert (res.dir / "report.html").is_file()


def test_resume_refuses_a_changed_model(run: detect.Run) -> None:
    before = (run.dir / "config.yaml").read_bytes()
    with pytest.raises(ValueError, match="--model"):
        detect.train(resume=run.dir, model="fasterrcnn_mobilenet_v3_large_320_fpn", epochs=2)
    assert (run.dir / "config.yaml").read_bytes() == before


def test_img_size_is_refused_for_fixed_size_models() -> None:
    with pytest.raises(ValueError, match="320"):
        arch_kwargs("ssdlite320_mobilenet_v3_large", 256)
    assert arch_kwargs("fasterrcnn_resnet50_fpn", 400) == {"min_size": 400, "max_size": 666}
    with pytest.raises(ValueError, match="unknown detect model 'resnet18'.*tiny_fcos"):
        arch_kwargs("resnet18", None)


def test_cli_detect_commands(run: detect.Run, scenes: Path, tmp_path: Path) -> None:
    cli = CliRunner()
    res = cli.invoke(app, ["detect", "train", "--help"])
    assert res.exit_code == 0
    for flag in ("--train-mode", "--backbone-lr-mult", "--resume", "--strategy"):
        assert flag in res.output
    res = cli.invoke(app, ["detect", "train", "--resume", str(run.dir), "--model", "x"])
    assert res.exit_code == 2 and "--model" in res.output
    image = sorted((scenes / "images").glob("*.png"))[0]
    res = cli.invoke(
        app,
        ["detect", "predict", str(run.dir), str(image), str(tmp_path / "nope.png"), "--json"],
    )
    assert res.exit_code == 1  # one input could not be read
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [bool(line["error"]) for line in lines] == [False, True]
    gt = run.dir / "eval" / "ground_truth.json"
    if not gt.is_file():
        detect.evaluate(run)
    res = cli.invoke(
        app,
        [
            "detect",
            "evaluate",
            "--data",
            str(gt),
            "--predictions",
            str(run.dir / "eval" / "predictions.json"),
            "--out",
            str(tmp_path / "cli-eval"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli-eval" / "metrics.json").is_file()
    res = cli.invoke(app, ["detect", "evaluate", "--data", str(gt)])
    assert res.exit_code == 2 and "--predictions" in res.output


def test_multiscale_training_sizes_and_evaluation_at_img_size() -> None:
    import torch

    from pixtell.detect.train import arch_kwargs, train_sizes
    from pixtell.models import create

    assert train_sizes(128, 0.0) == [] and arch_kwargs("tiny_fcos", 128) == {"img_size": 128}
    sizes = train_sizes(128, 0.25)
    assert sizes == [96, 112, 128, 144, 160]
    kw = arch_kwargs("tiny_fcos", 128, 0.25)
    net = create("tiny_fcos", "detect", num_classes=2, **kw)
    image = [torch.rand(3, 100, 100)]
    net.train()
    seen = {tuple(net.transform(image)[0].image_sizes[0]) for _ in range(40)}
    assert len(seen) > 1 and all(max(s) in sizes for s in seen)
    net.eval()
    assert net.transform(image)[0].image_sizes[0] == (128, 128)
    rcnn = arch_kwargs("fasterrcnn_resnet50_fpn", 400, 0.25)
    assert rcnn["min_size"][-1] == 400 and max(rcnn["min_size"]) == 500
