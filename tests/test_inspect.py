"""classify inspect: duplicates and leaks, confident learning (vs cleanlab), --fix / --undo."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixtell import classify
from pixtell.classify.inspect import fix, inspect, undo_fix
from pixtell.data.duplicates import duplicate_groups, perceptual_hash
from pixtell.data.folders import ImageFolderScan, Sample, scan_image_folder, write_split
from pixtell.data.images import file_sha256
from pixtell.metrics.label_issues import confident_joint, find_label_issues, plain_label_issues

CLASSES = ("amber", "blue", "green", "violet")
TINTS = {"amber": (1.0, 0.6, 0.1), "blue": (0.1, 0.3, 1.0), "green": (0.2, 0.9, 0.2)}
TINTS["violet"] = (0.7, 0.1, 0.9)


def pattern(rng: np.random.Generator, tint: tuple[float, float, float], size: int = 48) -> Image:
    """A smooth random texture in the class's tint: distinct images, distinct hashes."""
    low = rng.random((16, 16, 1)) * 0.8 + 0.2
    arr = (low * np.array(tint) * 255).astype(np.uint8)
    return Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC)


def make_data(root: Path, per_class: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pattern(rng, TINTS[name]).save(root / name / f"{name}_{i:02d}.png")
    return root


def near_copy(src: Path, dest: Path) -> None:
    """A resized, JPEG re-encoded copy of ``src``."""
    buf = io.BytesIO()
    Image.open(src).convert("RGB").resize((80, 80), Image.Resampling.BILINEAR).save(
        buf, "JPEG", quality=80
    )
    dest.write_bytes(buf.getvalue())


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- confident learning


def noisy_probs(seed: int, n: int = 300, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    labels[:k] = np.arange(k)
    logits = rng.normal(size=(n, k)) * 2.0
    logits[np.arange(n), labels] += 2.5
    flip = rng.random(n) < 0.1
    labels[flip] = (labels[flip] + rng.integers(1, k, flip.sum())) % k
    p = np.exp(logits)
    return labels, p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("seed", range(8))
def test_plain_confident_learning_equals_cleanlab(seed: int) -> None:
    cleanlab_filter = pytest.importorskip("cleanlab.filter")
    labels, probs = noisy_probs(seed, n=200 + 40 * seed, k=3 + seed)
    expected = cleanlab_filter.find_label_issues(
        labels,
        probs,
        filter_by="prune_by_noise_rate",
        return_indices_ranked_by="self_confidence",
    )
    got = plain_label_issues(labels, probs)
    assert len(got) > 0
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(find_label_issues(labels, probs, use_cleanlab=False), got)


def test_confident_joint_equals_cleanlab_and_is_calibrated() -> None:
    count = pytest.importorskip("cleanlab.count")
    labels, probs = noisy_probs(3)
    cj = confident_joint(labels, probs)
    np.testing.assert_array_equal(cj, count.compute_confident_joint(labels, probs))
    np.testing.assert_array_equal(cj.sum(axis=1), np.bincount(labels))


def test_confident_joint_by_hand() -> None:
    # thresholds: class 0 = mean(.9, .6) = .75, class 1 = mean(.8, .3) = .55
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    # row 2: p0 = .6 < .75 and p1 = .4 < .55: not counted; row 4: p0 = .7 < .75, not counted
    np.testing.assert_array_equal(confident_joint(labels, probs, calibrate=False), [[1, 0], [0, 1]])


# ----------------------------------------------------------------------------- duplicates


def test_duplicate_groups_exact_and_near(tmp_path: Path) -> None:
    root = make_data(tmp_path / "d", per_class=6)
    a, b = root / "amber" / "amber_00.png", root / "blue" / "blue_03.png"
    shutil.copy(a, root / "amber" / "same.png")
    near_copy(b, root / "green" / "resized.jpg")
    paths = sorted(root.rglob("*.*"))
    sha = {p: file_sha256(p) for p in paths}
    ph = {p: perceptual_hash(Image.open(p).convert("RGB")) for p in paths}
    groups = duplicate_groups(sha, ph)
    assert {(g.kind, g.paths) for g in groups} == {
        ("exact", (a, root / "amber" / "same.png")),
        ("near", (b, root / "green" / "resized.jpg")),
    }
    assert duplicate_groups(sha) == [g for g in groups if g.kind == "exact"]


def test_inspect_finds_duplicates_within_and_across_classes(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    shutil.copy(data / "amber" / "amber_01.png", data / "amber" / "copy.png")  # within a class
    near_copy(data / "blue" / "blue_02.png", data / "violet" / "blue_look.jpg")  # conflict
    (data / "green" / "broken.png").write_bytes(b"\x89PNG not really")
    checker = (np.indices((48, 48)).sum(0) // 4 % 2 * 255).astype(np.uint8)
    Image.fromarray(checker).convert("RGB").save(data / "green" / "odd_one.png")  # an outlier
    before = tree(data)
    res = inspect(data, out=tmp_path / "out", folds=3, progress=False)
    assert tree(data) == before
    rows = read_csv(res.dir / "duplicates.csv")
    by_group: dict[str, set[tuple[str, str]]] = {}
    for r in rows:
        by_group.setdefault(r["group"], set()).add((r["path"], r["kind"]))
    assert sorted(by_group.values(), key=sorted) == sorted(
        [
            {("amber/amber_01.png", "exact"), ("amber/copy.png", "exact")},
            {("blue/blue_02.png", "near"), ("violet/blue_look.jpg", "near")},
        ],
        key=sorted,
    )
    counts = json.loads((res.dir / "inspect.json").read_text())
    assert counts["exact_duplicate_groups"] == 1 and counts["near_duplicate_groups"] == 1
    assert counts["label_conflict_groups"] == 1 and counts["leak_groups"] == 0
    assert counts["unreadable"] == 1 and res.unreadable[0][0].name == "broken.png"
    assert counts["images"] == 4 * 20 + 3
    assert counts["classes"] == {"amber": 21, "blue": 20, "green": 21, "violet": 21}
    assert res.outliers[0][0].name == "odd_one.png"
    assert read_csv(res.dir / "outliers.csv")[0]["path"] == "green/odd_one.png"
    html = (res.dir / "report.html").read_text()
    assert "data:image/png;base64" in html and "Duplicates" in html
    assert (res.dir / "sizes.png").is_file() and (res.dir / "classes.png").is_file()


def test_presplit_folders_copies_across_splits_are_leaks(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_data(data / "train", per_class=8, seed=1)
    make_data(data / "test", per_class=4, seed=2)
    near_copy(data / "train" / "green" / "green_03.png", data / "test" / "green" / "again.jpg")
    res = inspect(data, out=tmp_path / "out", folds=2, progress=False)
    (group,) = res.counts["duplicate_groups"]
    assert group["kind"] == "near" and group["leak"] and group["splits"] == ["test", "train"]
    assert not group["label_conflict"]


def test_copies_across_the_splits_of_a_run_are_leaks(
    shapes_dir: Path, trained_run: classify.Run, tmp_path: Path
) -> None:
    """A run's split.json says which files it trained on: a copy in its test split leaks."""
    data = tmp_path / "shapes"
    shutil.copytree(shapes_dir, data)
    cls = sorted(p.name for p in data.iterdir())
    train_img = sorted((data / cls[0]).iterdir())[0]
    near_copy(train_img, data / cls[0] / "copy_of_train.jpg")
    scan = scan_image_folder(data, progress=False)
    run = tmp_path / "run"
    shutil.copytree(trained_run.dir, run)
    splits = {name: [s for s in v if s.path != train_img] for name, v in scan.splits.items()}
    splits = {k: [s for s in v if s.path.name != "copy_of_train.jpg"] for k, v in splits.items()}
    splits["train"].append(Sample(train_img, 0))
    splits["test"].append(Sample(data / cls[0] / "copy_of_train.jpg", 0))
    write_split(run / "split.json", ImageFolderScan(data, cls, splits))
    before = tree(data)
    res = inspect(data, model=run, out=tmp_path / "out", progress=False)
    assert tree(data) == before
    leaks = [g for g in res.counts["duplicate_groups"] if g["leak"]]
    assert len(leaks) == 1 and leaks[0]["splits"] == ["test", "train"]
    assert "did not train on" in res.method
    n_train = len(splits["train"])
    assert res.counts["images_checked_for_label_issues"] == res.counts["images"] - n_train


# ----------------------------------------------------------------------------- label issues


def test_flipped_labels_are_found(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", per_class=25, seed=3)
    rng = np.random.default_rng(0)
    chosen = {n: rng.choice(sorted((data / n).iterdir()), size=2, replace=False) for n in CLASSES}
    flipped = {}
    for name, files in chosen.items():
        wrong = CLASSES[(CLASSES.index(name) + 1) % len(CLASSES)]
        for src in files:
            shutil.move(src, data / wrong / src.name)
            flipped[f"{wrong}/{src.name}"] = name
    res = inspect(data, out=tmp_path / "out", progress=False)
    rows = read_csv(res.dir / "label_issues.csv")
    found = {r["path"]: r["suggested"] for r in rows}
    top = [r["path"] for r in rows[: len(flipped)]]
    assert sum(p in found for p in flipped) >= 0.75 * len(flipped)
    assert sum(p in flipped for p in top) >= 0.75 * len(flipped)
    assert all(found[p] == flipped[p] for p in flipped if p in found)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)  # most suspicious first


# ----------------------------------------------------------------------------- fix / undo


def test_fix_then_undo_restores_every_file(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", per_class=5)
    before = tree(data)
    table = tmp_path / "label_issues.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "given", "suggested", "score"])
        w.writerow(["amber/amber_00.png", "amber", "blue", "0.9"])
        w.writerow(["green/green_01.png", "green", "violet", "0.8"])
        w.writerow(["green/green_02.png", "green", "", "0.7"])  # the user kept this one
        w.writerow(["blue/blue_00.png", "blue", "nosuchclass", "0.6"])
        w.writerow(["violet/missing.png", "violet", "blue", "0.5"])
    (data / "blue" / "amber_00.png").write_bytes(b"a different file with the same name")
    before = tree(data)
    res = fix(table, data, progress=False)
    assert res.counts == {"blue": 1, "violet": 1}
    assert {p.name for p, _ in res.skipped} == {"blue_00.png", "missing.png"}
    after = tree(data)
    assert "amber/amber_00.png" not in after and "green/green_01.png" not in after
    assert after["blue/amber_00_1.png"] == before["amber/amber_00.png"]  # nothing overwritten
    assert after["violet/green_01.png"] == before["green/green_01.png"]
    assert res.manifest.parent == tmp_path
    undone = undo_fix(res.manifest, progress=False)
    assert undone.restored == 2 and not undone.problems
    assert tree(data) == before


def test_fix_refuses_files_outside_data(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", per_class=2)
    outside = tmp_path / "elsewhere.png"
    shutil.copy(data / "amber" / "amber_00.png", outside)
    table = tmp_path / "issues.csv"
    table.write_text("path,given,suggested,score\n../elsewhere.png,amber,blue,0.9\n")
    res = fix(table, data, progress=False)
    assert not res.placements and outside.is_file()
    assert "not inside the data folder" in res.skipped[0][1]


def test_cli_inspect_fix_and_undo(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pixtell.cli import app

    data = make_data(tmp_path / "data", per_class=6)
    before = tree(data)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app, ["classify", "inspect", str(data), "--out", str(out), "--folds", "2"]
    )
    assert r.exit_code == 0, r.output
    assert (out / "report.html").is_file() and tree(data) == before
    table = tmp_path / "edited.csv"
    table.write_text("path,given,suggested,score\nblue/blue_01.png,blue,green,0.9\n")
    r = CliRunner().invoke(app, ["classify", "inspect", str(data), "--fix", str(table)])
    assert r.exit_code == 0, r.output
    assert (data / "green" / "blue_01.png").is_file()
    manifest = tmp_path / "fix-manifest.jsonl"
    r = CliRunner().invoke(app, ["classify", "inspect", "--undo", str(manifest)])
    assert r.exit_code == 0, r.output
    assert tree(data) == before
