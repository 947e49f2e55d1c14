"""Evaluation, prediction and sorting through a trained run; metrics equal scikit-learn."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
)

from pixtell import classify
from pixtell.data.folders import read_split
from pixtell.data.images import file_sha256


def _predictions(path: Path) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    classes = [k[2:] for k in rows[0] if k.startswith("p_")]
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    return [r["true"] for r in rows], [r["pred"] for r in rows], probs, classes


@pytest.fixture(scope="module")
def evaluated(trained_run: classify.Run) -> classify.EvalResult:
    return classify.evaluate(trained_run)


def test_evaluate_writes_report_and_plots(
    evaluated: classify.EvalResult, trained_run: classify.Run
) -> None:
    for name in ("metrics.json", "predictions.csv", "confusion_matrix.png", "report.html"):
        assert (evaluated.dir / name).is_file(), name
    html = evaluated.report.read_text()
    assert "confusion_matrix.png" in html and "Per class" in html
    assert (trained_run.dir / "report.html").is_file()


def test_evaluate_uses_exactly_the_held_out_split(
    evaluated: classify.EvalResult, trained_run: classify.Run
) -> None:
    split = read_split(trained_run.dir / "split.json")
    with open(evaluated.dir / "predictions.csv", newline="") as f:
        evaluated_paths = {Path(r["path"]) for r in csv.DictReader(f)}
    assert evaluated_paths == {s.path for s in split.splits["test"]}
    assert not evaluated_paths & {s.path for s in split.splits["train"]}


def test_metrics_equal_scikit_learn(evaluated: classify.EvalResult) -> None:
    m = json.loads((evaluated.dir / "metrics.json").read_text())
    y_true, y_pred, probs, classes = _predictions(evaluated.dir / "predictions.csv")
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for avg in ("macro", "weighted"):
        p, r, f1, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        assert (m[f"{avg}_precision"], m[f"{avg}_recall"], m[f"{avg}_f1"]) == pytest.approx(
            (p, r, f1), abs=1e-6
        )
    p, r, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    for i, c in enumerate(classes):
        pc = m["per_class"][c]
        assert (pc["precision"], pc["recall"], pc["f1"]) == pytest.approx(
            (p[i], r[i], f1[i]), abs=1e-6
        )
        assert pc["support"] == support[i]
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=classes).tolist()
    assert m["loss"] == pytest.approx(log_loss(y_true, probs, labels=classes), rel=1e-4)


def test_metrics_function_matches_sklearn_on_edge_cases() -> None:
    from sklearn.metrics import top_k_accuracy_score

    from pixtell.metrics.classification import classification_metrics

    rng = np.random.default_rng(0)
    for trial in range(40):
        c = int(rng.integers(2, 9))
        y = rng.integers(0, c, int(rng.integers(1, 40)))
        if trial % 3 == 0:
            y = y % max(1, c - 2)  # classes that never occur
        probs = rng.dirichlet(np.ones(c), len(y))
        m = classification_metrics(y, probs, [str(i) for i in range(c)])
        pred = probs.argmax(1)
        for avg in ("macro", "weighted"):
            ref = precision_recall_fscore_support(y, pred, average=avg, zero_division=0)[:3]
            assert (m[f"{avg}_precision"], m[f"{avg}_recall"], m[f"{avg}_f1"]) == pytest.approx(ref)
        if c > 5:
            assert m["top5_accuracy"] == pytest.approx(
                top_k_accuracy_score(y, probs, k=5, labels=range(c))
            )
        else:  # k >= number of classes: always 1, so not reported
            assert not any(key.startswith("top") for key in m)


@pytest.mark.parametrize("tta", ["flip", "multiscale", "dense"])
def test_tta_modes_run_and_differ_from_plain(
    trained_run: classify.Run, evaluated: classify.EvalResult, tmp_path: Path, tta: str
) -> None:
    res = classify.evaluate(trained_run, tta=tta, out=tmp_path / tta)
    _, _, probs, _ = _predictions(res.dir / "predictions.csv")
    _, _, plain, _ = _predictions(evaluated.dir / "predictions.csv")
    assert res.metrics["tta"] == tta and probs.shape == plain.shape
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert not np.allclose(probs, plain)


def test_evaluate_on_a_separate_folder(
    trained_run: classify.Run, shapes_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "holdout"
    for cls in ("circle", "star"):
        (data / cls).mkdir(parents=True)
        for p in sorted((shapes_dir / cls).iterdir())[:3]:
            shutil.copy(p, data / cls / p.name)
    (data / "star" / "broken.png").write_bytes(b"\x89PNG\r\n")
    res = classify.evaluate(trained_run, data=data)
    assert res.metrics["n"] == 6 and res.dir.name == "eval-holdout"
    assert [Path(p).name for p, _ in res.metrics["skipped"]] == ["broken.png"]
    (data / "dragon").mkdir()
    shutil.copy(p, data / "dragon" / "x.png")
    with pytest.raises(ValueError, match="dragon"):
        classify.evaluate(trained_run, data=data)


def test_predict_topk_and_unreadable_files(
    trained_run: classify.Run, shapes_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    good = sorted((shapes_dir / "star").iterdir())[:2]
    preds = classify.predict(trained_run, [*good, bad], topk=3)
    assert [p.path for p in preds] == [*good, bad]
    for p in preds[:2]:
        assert len(p.topk) == 3 and p.error is None
        probs = [v for _, v in p.topk]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert preds[2].error and preds[2].topk == []


def test_sort_then_undo_through_a_model(
    trained_run: classify.Run, shapes_dir: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for p in sorted((shapes_dir / "circle").iterdir())[:4]:
        shutil.copy(p, inbox / p.name)
    (inbox / "broken.png").write_bytes(b"\x89PNG broken")
    before = {p.name: file_sha256(p) for p in inbox.iterdir()}
    res = classify.sort(
        inbox, model=trained_run, out=tmp_path / "sorted", threshold=0.99, move=True, progress=False
    )
    assert res.counts.get("others", 0) >= 1  # an undertrained model is rarely 99% sure
    assert sum(res.counts.values()) == 4
    assert [p.name for p in inbox.iterdir()] == ["broken.png"]  # unreadable stays put
    assert len(res.skipped) == 1
    classify.undo_sort(res.manifest)
    assert {p.name: file_sha256(p) for p in inbox.iterdir()} == before


def test_accuracy_on_imbalanced_data_is_not_a_mean_of_recalls() -> None:
    from sklearn.metrics import balanced_accuracy_score

    from pixtell.metrics.classification import classification_metrics

    # 90 images of class 0 (all right), 10 of class 1 (all wrong): accuracy 0.9, mean recall 0.5
    y = np.array([0] * 90 + [1] * 10)
    probs = np.tile([0.8, 0.2], (100, 1))
    m = classification_metrics(y, probs, ["common", "rare"])
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred)) == pytest.approx(0.9)
    assert m["macro_recall"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["accuracy"] != pytest.approx(m["macro_recall"])


def test_report_is_one_self_contained_file(
    evaluated: classify.EvalResult, trained_run: classify.Run
) -> None:
    html = evaluated.report.read_text(encoding="utf-8")
    assert "<img src='data:image/png;base64," in html
    assert "<img src='confusion" not in html  # figures embedded, not linked
    for part in ("Run", "split (images)", "training time", "Correct predictions", "Accuracy"):
        assert part in html, part
    assert str(trained_run.config["data"]) in html
    # six classes: top-5 accuracy says nothing and is left out; readable names are used
    assert "top5" not in html and "macro_f1" not in html and "Macro F1" in html


def test_evaluations_of_same_named_folders_do_not_overwrite(
    trained_run: classify.Run, shapes_dir: Path, tmp_path: Path
) -> None:
    dirs = []
    for parent in ("a", "b"):
        data = tmp_path / parent / "holdout"
        (data / "star").mkdir(parents=True)
        for p in sorted((shapes_dir / "star").iterdir())[:2]:
            shutil.copy(p, data / "star" / p.name)
        res = classify.evaluate(trained_run, data=data)
        assert res.metrics["data"] == str(data.resolve())
        dirs.append(res.dir)
    assert dirs[0] != dirs[1] and all((d / "metrics.json").is_file() for d in dirs)
    again = classify.evaluate(trained_run, data=tmp_path / "a" / "holdout")
    assert again.dir == dirs[0]
    shutil.rmtree(dirs[0])
    shutil.rmtree(dirs[1])
