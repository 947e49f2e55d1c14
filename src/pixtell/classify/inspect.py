"""Dataset health for class folders: duplicates, leaks, likely label errors, outliers.

``inspect`` reads DATA (never writes to it) and writes ``label_issues.csv``,
``duplicates.csv``, ``outliers.csv``, ``inspect.json``, histograms and ``report.html`` into
its own folder; ``fix`` then moves the files of an edited ``label_issues.csv`` into their
suggested class folders, recorded in a manifest that ``undo_sort`` (``--undo``) reverses.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import track

from pixtell.classify.sort import SortResult, move_files, undo_sort
from pixtell.data.duplicates import (
    DEFAULT_NEAR_THRESHOLD,
    DuplicateGroup,
    duplicate_groups,
    perceptual_hash,
)
from pixtell.data.folders import SPLITS, read_split, scan_image_folder
from pixtell.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, file_sha256, load_image
from pixtell.metrics.label_issues import find_label_issues
from pixtell.report import Section, contact_sheet, write_report
from pixtell.runs import Run, new_run_dir

__all__ = ["InspectResult", "LabelIssue", "fix", "inspect", "undo_fix"]

FEATURE_SIZE = 32  # images are compared as 32x32 RGB thumbnails
FIX_MANIFEST = "fix-manifest.jsonl"
_PROGRESS_MIN_FILES = 200

undo_fix = undo_sort  # a fix is recorded exactly like a sort, so it is undone the same way


@dataclass(frozen=True)
class LabelIssue:
    """A file whose given label is likely wrong; ``score`` = 1 - p(given label)."""

    path: Path
    given: str
    suggested: str
    score: float


@dataclass
class InspectResult:
    """What :func:`inspect` found and where it wrote it."""

    dir: Path
    counts: dict[str, Any]  # the content of inspect.json
    label_issues: list[LabelIssue]  # most suspicious first
    duplicates: list[DuplicateGroup]
    outliers: list[tuple[Path, float]]  # (file, robust z-score of its distance), farthest first
    unreadable: list[tuple[Path, str]]  # (file, reason)
    method: str  # how the probabilities for label issues were obtained
    report: Path
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Image:
    path: Path
    label: int  # index into classes, -1 for files known only from a run's split.json
    split: str | None
    sha256: str
    phash: np.ndarray
    size: tuple[int, int]
    pixels: np.ndarray | None  # FEATURE_SIZE^2 * 3 floats in [0, 1]; None outside DATA


# ----------------------------------------------------------------------------- reading


def _collect(data: Path) -> tuple[list[str], list[tuple[Path, str, str | None]], list]:
    """Classes, (file, class, split from the folder layout) and non-image files of DATA."""
    scan = scan_image_folder(data, fractions=(1.0, 0.0, 0.0), verify=False, progress=False)
    if not scan.presplit:
        files = [(s.path, scan.classes[s.label], None) for s in scan.splits["train"]]
        return scan.classes, files, list(scan.skipped)
    # DATA/train|val|test/<class>/: scanned split by split, so that copies across the split
    # folders are reported here as leaks instead of being dropped by the scan
    files, skipped, classes = [], [], set()
    for split in SPLITS:
        if not (data / split).is_dir():
            continue
        part = scan_image_folder(
            data / split, fractions=(1.0, 0.0, 0.0), verify=False, progress=False
        )
        classes |= set(part.classes)
        files += [(s.path, part.classes[s.label], split) for s in part.splits["train"]]
        skipped += part.skipped
    return sorted(classes), files, skipped


def _read(path: Path, max_pixels: int) -> tuple[str, np.ndarray, tuple[int, int], np.ndarray]:
    """(sha256, phash, (width, height), thumbnail pixels) of one file; ImageLoadError if bad."""
    image = load_image(path, max_pixels=max_pixels)
    try:
        sha = file_sha256(path)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    thumb = image.resize((FEATURE_SIZE, FEATURE_SIZE), resample=2)  # bilinear
    pixels = np.asarray(thumb, dtype=np.float32).ravel() / 255.0
    return sha, perceptual_hash(image), image.size, pixels


def _read_all(
    entries: list[tuple[Path, int, str | None]], max_pixels: int, progress: bool, keep: bool
) -> tuple[list[_Image], list[tuple[Path, str]]]:
    images, bad = [], []
    show = progress and len(entries) > _PROGRESS_MIN_FILES
    for path, label, split in track(entries, "Reading images", disable=not show, transient=True):
        try:
            sha, ph, size, pixels = _read(path, max_pixels)
        except ImageLoadError as exc:
            bad.append((path, exc.reason))
            continue
        images.append(_Image(path, label, split, sha, ph, size, pixels if keep else None))
    return images, bad


def _run_split(run: Run) -> tuple[dict[Path, tuple[str, str]], list[str]]:
    """resolved path → (split, class name) from the run's split.json, and its classes."""
    path = run.dir / "split.json"
    if not path.is_file():
        raise ValueError(f"{run.dir} has no split.json; pass a run made by `classify train`")
    scan = read_split(path)
    where = {
        s.path.resolve(): (name, scan.classes[s.label])
        for name in SPLITS
        for s in scan.splits.get(name, [])
    }
    return where, scan.classes


# ----------------------------------------------------------------------------- analysis


def _features(pixels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(PCA scores, the same scaled so that the first component has unit variance).

    The PCA is fitted once on all thumbnails (it sees no labels, so out-of-fold predictions
    stay out-of-sample). Scaling by the first component only keeps the weak components weak;
    whitening them all let noise dominate the classifier on small sets.
    """
    from sklearn.decomposition import PCA

    n_comp = max(1, min(64, pixels.shape[0] - 1, pixels.shape[1]))
    pca = PCA(n_components=n_comp, random_state=seed).fit(pixels)
    scores = pca.transform(pixels)
    return scores, scores / np.sqrt(max(float(pca.explained_variance_[0]), 1e-12))


def _oof_probs(
    features: np.ndarray, labels: np.ndarray, k: int, folds: int, seed: int
) -> np.ndarray:
    """Out-of-fold probabilities (N, k) from a multinomial logistic regression.

    We fit a small model on in-memory features rather than running ``classify.train`` per
    fold: a CNN trained k times would take minutes to hours on a laptop CPU, while this takes
    seconds, and confident learning needs only calibrated-enough out-of-sample probabilities
    (on Fashion-MNIST with 5% flipped labels it finds most flips; see bench/inspect_quality.py).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(labels), k))
    # StratifiedKFold needs at least n_splits members in the largest class
    n_splits = min(folds, int(np.bincount(labels).max()))
    if n_splits < 2:
        return np.full((len(labels), k), 1.0 / k)  # one image per class: nothing to learn from
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        for train_idx, test_idx in splitter.split(features, labels):
            present = np.unique(labels[train_idx])
            if len(present) < 2:
                probs[test_idx] = np.bincount(labels[train_idx], minlength=k) / len(train_idx)
                continue
            clf = LogisticRegression(C=0.1, max_iter=300).fit(
                features[train_idx], labels[train_idx]
            )
            probs[np.ix_(test_idx, clf.classes_)] = clf.predict_proba(features[test_idx])
    return probs


def _model_probs(
    run: Run, images: list[_Image], classes: list[str], batch_size: int = 64
) -> tuple[list[int], np.ndarray]:
    """Indices of images the run did not train on, and its probabilities for them."""
    from pixtell.classify.predictor import Classifier

    clf = Classifier.from_run(run, device="cpu")
    if sorted(clf.classes) != sorted(classes):
        raise ValueError(
            f"the run {run.dir} knows the classes {clf.classes}, DATA has {classes}; "
            "inspect with a run trained on these classes, or without --model"
        )
    order = [clf.classes.index(c) for c in classes]
    todo = [i for i, im in enumerate(images) if im.split != "train"]
    kept, rows = [], []
    for j, p in clf.iter_probs([images[i].path for i in todo], batch_size=batch_size):
        if not isinstance(p, str):
            kept.append(todo[j])
            rows.append(p.numpy()[order])
    return kept, np.array(rows).reshape(len(rows), len(classes))


def _outliers(scores: np.ndarray, labels: np.ndarray, z_max: float) -> list[tuple[int, float]]:
    """(index, robust z) of images far from their class centroid, farthest first.

    Distance to the class mean in PCA space, as a robust z-score within the class
    (median and MAD), so that classes of different spread are judged alike.
    """
    found = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 5:
            continue
        dist = np.linalg.norm(scores[idx] - scores[idx].mean(0), axis=1)
        med = np.median(dist)
        mad = 1.4826 * np.median(np.abs(dist - med))
        z = (dist - med) / max(mad, 1e-12)
        found += [(int(i), float(v)) for i, v in zip(idx, z, strict=True) if v > z_max]
    return sorted(found, key=lambda t: -t[1])


# ----------------------------------------------------------------------------- output


def _out_dir(data: Path, out: str | Path | None) -> Path:
    if out is None:
        name = re.sub(r"[^\w.\-]+", "_", data.name) or "data"
        return new_run_dir(Path("runs"), "inspect", name)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; choose another --out")
    if out.resolve() == data or out.resolve().is_relative_to(data):
        raise ValueError(f"--out {out} is inside DATA; inspect never writes into DATA")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _tile(path: Path, caption: str) -> tuple[np.ndarray, str] | None:
    try:
        return np.asarray(load_image(path).resize((96, 96))), f"{path.name}\n{caption}"
    except ImageLoadError:
        return None


def _sheet(items: list[tuple[Path, str]], out: Path, title: str) -> Path | None:
    tiles = [t for p, caption in items[:30] if (t := _tile(p, caption))]
    return contact_sheet(tiles, out, title=title)


def _histograms(
    counts: dict[str, int], sizes: list[tuple[int, int]], out: Path
) -> tuple[Path, Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(counts) + 2), 3.5))
    ax.bar(list(counts), list(counts.values()), color="#4c72b0")
    ax.set(title="images per class", ylabel="images")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(out / "classes.png", dpi=100)
    plt.close(fig)
    w = np.array([s[0] for s in sizes] or [0])
    h = np.array([s[1] for s in sizes] or [0])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, values, title in (
        (axes[0], w, "width (px)"),
        (axes[1], h, "height (px)"),
        (axes[2], w / np.maximum(h, 1), "aspect ratio (width / height)"),
    ):
        ax.hist(values, bins=30, color="#55a868")
        ax.set(title=title, ylabel="images")
    fig.tight_layout()
    fig.savefig(out / "sizes.png", dpi=100)
    plt.close(fig)
    return out / "classes.png", out / "sizes.png"


# ----------------------------------------------------------------------------- inspect


def inspect(
    data: str | Path,
    *,
    model: str | Path | Run | None = None,
    out: str | Path | None = None,
    folds: int = 5,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    outlier_z: float = 5.0,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> InspectResult:
    """Check the class folders in ``data`` and write the findings to ``out`` (never to DATA).

    Finds exact and near-duplicates (within a class, across classes = label conflicts, across
    the train/val/test splits of ``model``'s split.json or of DATA's split folders = leaks),
    likely label errors (confident learning on out-of-fold probabilities of a logistic
    regression on image thumbnails with ``folds`` folds, or on ``model``'s probabilities for
    the images it did not train on), outliers (robust z-score of the distance to the class
    centroid above ``outlier_z``), class imbalance, image sizes and unreadable files.
    ``out`` defaults to a new ``runs/inspect/<DATA name>``.
    """
    missing = [m for m in ("sklearn", "imagehash") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"classify inspect needs {' and '.join(missing)}: pip install 'pixtell[inspect]'"
        )
    data = Path(data).expanduser().resolve()
    if folds < 2:
        raise ValueError(f"--folds must be at least 2 (got {folds})")
    run = Run.load(model) if model is not None else None
    classes, files, skipped = _collect(data)
    label_of = {c: i for i, c in enumerate(classes)}
    split_of: dict[Path, tuple[str, str]] = {}
    if run is not None:
        split_of, _ = _run_split(run)
    entries = [
        (p, label_of[c], split_of[p.resolve()][0] if p.resolve() in split_of else s)
        for p, c, s in files
    ]
    out_dir = _out_dir(data, out)
    images, unreadable = _read_all(entries, max_pixels, progress, keep=True)
    unreadable += skipped
    if not images:
        raise ValueError(f"{data} has no readable images")

    # files of the run's splits that are not in DATA take part in the duplicate search only
    in_data = {im.path.resolve() for im in images} | {p.resolve() for p, _ in unreadable}
    extra = [(p, -1, s) for p, (s, _) in sorted(split_of.items()) if p not in in_data]
    others, _ = _read_all([e for e in extra if e[0].is_file()], max_pixels, progress, False)
    every = images + others
    info = {im.path: im for im in every}
    class_name = {p: split_of[p.resolve()][1] for p in info if p.resolve() in split_of}
    class_name |= {im.path: classes[im.label] for im in images}
    groups = duplicate_groups(
        {im.path: im.sha256 for im in every},
        {im.path: im.phash for im in every},
        threshold=near_threshold,
    )
    group_rows = []
    for g in groups:
        g_classes = sorted({class_name.get(p, "?") for p in g.paths})
        g_splits = sorted({s for p in g.paths if (s := info[p].split) is not None})
        group_rows.append(
            {
                "kind": g.kind,
                "files": len(g.paths),
                "classes": g_classes,
                "splits": g_splits,
                "label_conflict": len(g_classes) > 1,
                "leak": len(g_splits) > 1,
            }
        )

    labels = np.array([im.label for im in images])
    pixels = np.stack([im.pixels for im in images])  # type: ignore[misc]
    scores, scaled = _features(pixels, seed)
    if run is not None:
        method = f"probabilities of {run.dir} on the {{n}} images it did not train on"
        idx, probs = _model_probs(run, images, classes)
        method = method.format(n=len(idx))
    else:
        method = (
            f"{folds}-fold out-of-fold probabilities of a logistic regression on "
            f"{FEATURE_SIZE}x{FEATURE_SIZE} thumbnails (PCA)"
        )
        idx, probs = (
            list(range(len(images))),
            _oof_probs(scaled, labels, len(classes), folds, seed),
        )
    issues: list[LabelIssue] = []
    if len(idx) and len(np.unique(labels[idx])) > 1:
        sub_labels = labels[idx]
        for j in find_label_issues(sub_labels, probs):
            p = probs[j].copy()
            given = int(sub_labels[j])
            score = 1.0 - float(p[given])
            p[given] = -1.0
            im = images[idx[j]]
            issues.append(LabelIssue(im.path, classes[given], classes[int(p.argmax())], score))
    outliers = [(images[i].path, z) for i, z in _outliers(scores, labels, outlier_z)]

    per_class = Counter(classes[im.label] for im in images)
    class_counts = {c: per_class.get(c, 0) for c in classes}
    counts: dict[str, Any] = {
        "data": str(data),
        "model": str(run.dir) if run is not None else None,
        "images": len(images),
        "classes": class_counts,
        "imbalance_ratio": max(class_counts.values()) / max(1, min(class_counts.values())),
        "unreadable": len(unreadable),
        "label_issues": len(issues),
        "label_issue_method": method,
        "images_checked_for_label_issues": len(idx),
        "exact_duplicate_groups": sum(g.kind == "exact" for g in groups),
        "near_duplicate_groups": sum(g.kind == "near" for g in groups),
        "label_conflict_groups": sum(r["label_conflict"] for r in group_rows),
        "leak_groups": sum(r["leak"] for r in group_rows),
        "outliers": len(outliers),
        "near_threshold_bits": near_threshold,
        "duplicate_groups": [{"group": i + 1} | r for i, r in enumerate(group_rows)],
    }
    files_out = _write_outputs(
        out_dir, data, counts, issues, groups, outliers, unreadable, images, class_name
    )
    return InspectResult(
        dir=out_dir,
        counts=counts,
        label_issues=issues,
        duplicates=groups,
        outliers=outliers,
        unreadable=unreadable,
        method=method,
        report=files_out["report"],
        files=files_out,
    )


def _write_outputs(
    out: Path,
    data: Path,
    counts: dict[str, Any],
    issues: list[LabelIssue],
    groups: list[DuplicateGroup],
    outliers: list[tuple[Path, float]],
    unreadable: list[tuple[Path, str]],
    images: list[_Image],
    class_name: dict[Path, str],
) -> dict[str, Path]:
    files = {
        "label_issues": out / "label_issues.csv",
        "duplicates": out / "duplicates.csv",
        "outliers": out / "outliers.csv",
        "json": out / "inspect.json",
    }
    with open(files["label_issues"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "given", "suggested", "score"])
        w.writerows([_rel(i.path, data), i.given, i.suggested, f"{i.score:.4f}"] for i in issues)
    with open(files["duplicates"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["group", "path", "kind"])
        for n, g in enumerate(groups, 1):
            w.writerows([n, _rel(p, data), g.kind] for p in g.paths)
    with open(files["outliers"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "z"])
        w.writerows([_rel(p, data), class_name.get(p, "?"), f"{z:.2f}"] for p, z in outliers)
    files["json"].write_text(json.dumps(counts, indent=2, ensure_ascii=False) + "\n")
    classes_png, sizes_png = _histograms(counts["classes"], [im.size for im in images], out)
    dup_items = [
        (p, f"group {n} {g.kind}\n{class_name.get(p, '?')}")
        for n, g in enumerate(groups, 1)
        for p in g.paths
    ]
    sheets = {
        "label issues": _sheet(
            [(i.path, f"{i.given} → {i.suggested} ({i.score:.2f})") for i in issues],
            out / "label_issues.png",
            "likely label errors (given → suggested, score)",
        ),
        "duplicates": _sheet(dup_items, out / "duplicates.png", "duplicate groups"),
        "outliers": _sheet(
            [(p, f"{class_name.get(p, '?')} z={z:.1f}") for p, z in outliers],
            out / "outliers.png",
            "farthest from their class centroid",
        ),
    }
    summary = {k: v for k, v in counts.items() if not isinstance(v, dict | list)}
    sections = [
        Section("Summary", table=summary, links=list(files.values())),
        Section("Classes", table=counts["classes"], images=[classes_png]),
        Section("Image sizes", images=[sizes_png]),
        Section(
            "Likely label errors",
            text=f"{len(issues)} files; method: {counts['label_issue_method']}. Edit "
            "label_issues.csv, then `pixtell classify inspect DATA --fix label_issues.csv`.",
            rows=[["path", "given", "suggested", "score"]]
            + [[_rel(i.path, data), i.given, i.suggested, i.score] for i in issues[:100]],
            images=[p for p in [sheets["label issues"]] if p],
        ),
        Section(
            "Duplicates",
            rows=[["group", "kind", "files", "classes", "splits", "conflict", "leak"]]
            + [
                [
                    r["group"],
                    r["kind"],
                    r["files"],
                    " ".join(r["classes"]),
                    " ".join(r["splits"]),
                    r["label_conflict"],
                    r["leak"],
                ]
                for r in counts["duplicate_groups"][:100]
            ],
            images=[p for p in [sheets["duplicates"]] if p],
        ),
        Section(
            "Outliers",
            rows=[["path", "z"]] + [[_rel(p, data), z] for p, z in outliers[:100]],
            images=[p for p in [sheets["outliers"]] if p],
        ),
        Section(
            "Unreadable files",
            rows=[["path", "reason"]] + [[_rel(p, data), r] for p, r in unreadable],
        ),
    ]
    files["report"] = write_report(out / "report.html", f"Dataset health: {data.name}", sections)
    return files


# ----------------------------------------------------------------------------- fix


def fix(
    csv_path: str | Path,
    data: str | Path,
    *,
    manifest: str | Path | None = None,
    progress: bool = True,
) -> SortResult:
    """Move each file of an (edited) ``label_issues.csv`` into its ``suggested`` class folder.

    Only rows whose ``suggested`` names an existing class folder next to the file's own are
    moved (a blank ``suggested`` keeps the file); anything else is reported in ``skipped``.
    Nothing is overwritten. The manifest (default ``fix-manifest.jsonl`` beside the CSV)
    is undone with :func:`undo_fix` (``--undo``), exactly like a sort.
    """
    csv_path, data = Path(csv_path), Path(data).expanduser().resolve()
    if not data.is_dir():
        raise ValueError(f"data folder {data} does not exist")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"path", "suggested"} <= set(reader.fieldnames or []):
            raise ValueError(f"{csv_path} needs the columns path and suggested")
        rows = list(reader)
    moves: list[tuple[Path, Path]] = []
    skipped: list[tuple[Path, str]] = []
    for row in rows:
        src = data / (row["path"] or "").strip()
        suggested = (row["suggested"] or "").strip()
        reason = _fix_problem(src, suggested, data)
        if reason == "":
            continue
        if reason:
            skipped.append((src, reason))
        else:
            moves.append((src, src.parent.parent / suggested))
    result = move_files(
        moves,
        root=data,
        manifest=Path(manifest) if manifest else csv_path.parent / FIX_MANIFEST,
        header={"command": "classify inspect --fix", "labels": str(csv_path.resolve())},
        progress=progress,
    )
    result.skipped = skipped + result.skipped
    return result


def _fix_problem(src: Path, suggested: str, data: Path) -> str | None:
    """Why a row cannot be applied; "" for a row to leave alone; None when it can be moved."""
    if not suggested:
        return ""
    if not src.resolve().is_relative_to(data):
        return "not inside the data folder; left in place"
    if not src.is_file():
        return "file not found; left as it is"
    if suggested in {".", ".."} or "/" in suggested or "\\" in suggested:
        return f"suggested class {suggested!r} is not a plain folder name"
    if suggested == src.parent.name:
        return ""
    if not (src.parent.parent / suggested).is_dir():
        return (
            f"no class folder {suggested!r} beside {src.parent.name!r}; "
            "create it first to use a new class"
        )
    return None
