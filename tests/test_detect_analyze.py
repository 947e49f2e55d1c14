"""Detection dataset analysis: figures against hand-computed values, files, report, numbering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pixtell.detect.analyze import analyze, compute_stats
from pixtell.detect.data import DetDataset, DetImage, load_dataset
from tests.test_detect_data import make_voc


def _img(name: str, size: tuple[int, int], boxes: list[list[float]], labels: list[int]) -> DetImage:
    return DetImage(
        Path("/d") / name,
        size[0],
        size[1],
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int64),
        np.zeros(len(labels), bool),
    )


def _hand_dataset() -> DetDataset:
    """Areas 100, 121, 144, 169 (class a) and 1 (class b, a small outlier); one empty image."""
    images = [
        _img("one.png", (100, 50), [[0, 0, 10, 10], [10, 10, 21, 21]], [0, 0]),
        _img("two.png", (100, 50), [[20, 30, 32, 42], [0, 0, 13, 13], [24, 36, 26, 36.5]], [0] * 3),
        _img("three.png", (40, 40), [], []),
    ]
    images[1].labels[2] = 1
    return DetDataset(Path("/d"), "coco", ["a", "b"], images, [])


def test_stats_match_hand_computed_values() -> None:
    stats = compute_stats(_hand_dataset())
    stats.pop("_arrays")
    assert stats["dataset"] | {"root": None} == {
        "root": None,
        "format": "coco",
        "images": 3,
        "boxes": 5,
        "classes": 2,
        "difficult_boxes": 0,
        "images_without_boxes": 1,
        "problems": 0,
        "splits": {},
    }
    assert [(c["name"], c["boxes"], c["images"]) for c in stats["classes"]] == [
        ("a", 4, 2),
        ("b", 1, 1),
    ]
    assert stats["objects_per_image"]["histogram"] == {"0": 1, "2": 1, "3": 1}
    assert stats["objects_per_image"]["mean"] == pytest.approx(5 / 3)
    area = stats["box_area"]
    assert area["median"] == pytest.approx(121) and area["mean"] == pytest.approx(535 / 5)
    # log10 areas 0, 2, 2.0828, 2.1584, 2.2279: the quartiles fence out only the 1 px² box
    assert (area["small_outliers"], area["large_outliers"]) == (1, 0)
    assert [(o["file"], o["class"], o["kind"]) for o in stats["area_outliers"]] == [
        ("two.png", "b", "small")
    ]
    assert stats["aspect_ratio"]["max"] == pytest.approx(4.0)  # the 2 x 0.5 box
    assert stats["images_without_boxes"] == ["three.png"]
    # 100x50 images, 20x20 grid: centres (5, 5) and (6.5, 6.5) -> column 1, row 2;
    # (15.5, 15.5) -> (0.155, 0.31) -> column 3, row 6
    heat = np.asarray(stats["box_centers"]["counts"])
    assert heat.sum() == 5 and heat[2, 1] == 2 and heat[6, 3] == 1
    # centre (26, 36) -> (0.26, 0.72) -> column 5, row 14; box [24,36,26,36.5] centre (25, 36.25)
    assert heat[14, 5] == 2
    per_class = {c["name"]: c for c in stats["per_class"]}
    assert per_class["a"]["median_width"] == pytest.approx(11.5)
    assert stats["image_sizes"]["most_common"] == [[100, 50, 2], [40, 40, 1]]


def test_analyze_voc_reports_empty_clipped_and_dropped(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    result = analyze(root, out=tmp_path / "analysis")
    assert result.dir == tmp_path / "analysis" and result.report.is_file()
    saved = json.loads((result.dir / "analysis.json").read_text())
    assert saved["images_without_boxes"] == ["JPEGImages/b.jpg"]
    reasons = [reason for _, reason in saved["problems"]]
    assert any("clipped" in r for r in reasons) and any("dropped" in r for r in reasons)
    assert saved["dataset"]["difficult_boxes"] == 1
    assert saved["dataset"]["splits"] == {"train": 1, "val": 1}
    assert [c["name"] for c in saved["classes"]] == ["dog", "cat"]  # 2 boxes, 1 box
    for png in saved["plots"].values():
        assert (result.dir / png).is_file()
    html = result.report.read_text()
    for expected in ("Images without boxes (1)", "JPEGImages/b.jpg", "clipped", "dropped"):
        assert expected in html
    assert html.count("<img ") == len(saved["plots"]) == 7


def test_default_out_is_numbered_never_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = load_dataset(make_voc(tmp_path / "my voc"))
    monkeypatch.chdir(tmp_path)
    first = analyze(ds)
    marker = (first.dir / "analysis.json").read_text()
    second = analyze(ds)
    assert first.dir == Path("runs/detect/analysis-my_voc")
    assert second.dir == Path("runs/detect/analysis-my_voc-2")
    assert (first.dir / "analysis.json").read_text() == marker
    with pytest.raises(FileExistsError):
        analyze(ds, out=first.dir)


def test_dataset_without_boxes_still_gets_a_report(tmp_path: Path) -> None:
    ds = DetDataset(tmp_path, "yolo", ["x"], [_img("e.png", (8, 8), [], [])], [])
    result = analyze(ds, out=tmp_path / "a")
    assert result.stats["dataset"]["boxes"] == 0
    assert set(result.stats["plots"]) == {"classes", "objects", "sizes"}
