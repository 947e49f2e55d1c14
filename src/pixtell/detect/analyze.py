"""Dataset analysis for detection: what the boxes look like before training on them.

``analyze`` writes ``analysis.json`` (every figure), one PNG per plot and ``report.html``:
class balance, objects per image, box areas (log scale, outliers by IQR), aspect ratios,
where box centres fall, image sizes, images without boxes, per-class sizes and every
problem met while reading the data.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import NullFormatter

from pixtell.detect.data import DetDataset, load_dataset
from pixtell.report import Section, plt, write_report
from pixtell.runs import new_run_dir

_HEATMAP_BINS = 20
_LIST_LIMIT = 50  # rows of long lists shown in the report (analysis.json has them all)


@dataclass
class AnalysisResult:
    """Where the analysis went, its figures, and the HTML report."""

    dir: Path
    stats: dict[str, Any]
    report: Path


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {
        "min": float(values.min()),
        "median": float(np.median(values)),
        "mean": float(values.mean()),
        "max": float(values.max()),
    }


def compute_stats(ds: DetDataset) -> dict[str, Any]:
    """Every figure of the analysis as a JSON-ready dict (paths relative to ``ds.root``)."""
    root = ds.root
    n_img, n_cls = len(ds.images), len(ds.class_names)
    counts = np.array([len(img.boxes) for img in ds.images], dtype=np.int64)
    boxes = (
        np.concatenate([img.boxes for img in ds.images]).astype(np.float64)
        if n_img
        else np.zeros((0, 4))
    )
    labels = np.concatenate([img.labels for img in ds.images]) if n_img else np.zeros(0, np.int64)
    owner = np.repeat(np.arange(n_img), counts)
    sizes = np.array([[img.width, img.height] for img in ds.images], dtype=np.float64).reshape(
        -1, 2
    )
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area, aspect = w * h, w / np.maximum(h, 1e-9)
    box_sizes = sizes[owner]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 / np.maximum(box_sizes[:, 0], 1)
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 / np.maximum(box_sizes[:, 1], 1)

    per_class_boxes = np.bincount(labels, minlength=n_cls)
    per_class_images = np.zeros(n_cls, dtype=np.int64)
    for img in ds.images:
        per_class_images[np.unique(img.labels)] += 1
    order = sorted(range(n_cls), key=lambda k: (-per_class_boxes[k], ds.class_names[k]))
    classes = [
        {
            "name": ds.class_names[k],
            "boxes": int(per_class_boxes[k]),
            "images": int(per_class_images[k]),
            "share": float(per_class_boxes[k] / max(len(labels), 1)),
        }
        for k in order
    ]

    # IQR on log10(area): box areas span orders of magnitude, so fences on the raw areas would
    # flag most large boxes and no small ones.
    area_stats: dict[str, Any] = _summary(area)
    outliers: list[dict[str, Any]] = []
    if area.size:
        log_area = np.log10(np.maximum(area, 1e-9))
        q1, q3 = np.percentile(log_area, [25, 75])
        lo, hi = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
        flagged = np.flatnonzero((log_area < lo) | (log_area > hi))
        area_stats |= {
            "q1": float(10**q1),
            "q3": float(10**q3),
            "low_fence": float(10**lo),
            "high_fence": float(10**hi),
            "small_outliers": int((log_area < lo).sum()),
            "large_outliers": int((log_area > hi).sum()),
        }
        outliers = [
            {
                "file": _rel(ds.images[owner[j]].path, root),
                "class": ds.class_names[labels[j]],
                "box": [round(float(v), 2) for v in boxes[j]],
                "area": float(area[j]),
                "kind": "small" if log_area[j] < lo else "large",
            }
            for j in flagged
        ]

    heat, _, _ = np.histogram2d(
        cy, cx, bins=_HEATMAP_BINS, range=[[0.0, 1.0], [0.0, 1.0]]
    )  # rows are y (top to bottom), columns x
    size_counts = Counter((img.width, img.height) for img in ds.images)
    per_class = []
    for k in order:
        sel = labels == k
        per_class.append(
            {
                "name": ds.class_names[k],
                "boxes": int(sel.sum()),
                **{f"area_{key}": v for key, v in _summary(area[sel]).items()},
                "median_width": float(np.median(w[sel])) if sel.any() else None,
                "median_height": float(np.median(h[sel])) if sel.any() else None,
                "median_aspect": float(np.median(aspect[sel])) if sel.any() else None,
            }
        )
    empty = [_rel(img.path, root) for img, c in zip(ds.images, counts, strict=True) if c == 0]
    splits = Counter(img.split for img in ds.images if img.split is not None)
    return {
        "dataset": {
            "root": str(root),
            "format": ds.format,
            "images": n_img,
            "boxes": int(len(labels)),
            "classes": n_cls,
            "difficult_boxes": int(sum(int(img.difficult.sum()) for img in ds.images)),
            "images_without_boxes": len(empty),
            "problems": len(ds.problems),
            "splits": dict(sorted(splits.items())),
        },
        "classes": classes,
        "objects_per_image": {
            **_summary(counts.astype(np.float64)),
            "histogram": {str(k): int(v) for k, v in sorted(Counter(counts.tolist()).items())},
        },
        "box_area": area_stats,
        "area_outliers": outliers,
        "box_width": _summary(w),
        "box_height": _summary(h),
        "aspect_ratio": _summary(aspect),
        "box_centers": {"bins": _HEATMAP_BINS, "counts": heat.astype(int).tolist()},
        "image_sizes": {
            "width": _summary(sizes[:, 0]),
            "height": _summary(sizes[:, 1]),
            "most_common": [[w_, h_, c] for (w_, h_), c in size_counts.most_common(20)],
            "distinct": len(size_counts),
        },
        "per_class": per_class,
        "images_without_boxes": empty,
        "problems": [[_rel(p, root), reason] for p, reason in ds.problems],
        # raw per-box arrays for the plots (not written to analysis.json)
        "_arrays": {
            "area": area,
            "aspect": aspect,
            "labels": labels,
            "counts": counts,
            "sizes": sizes,
        },
    }


# ----------------------------------------------------------------------------- plots


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_classes(stats: dict[str, Any], out: Path) -> Path:
    classes = stats["classes"]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(classes) + 1)))
    ax.barh([c["name"] for c in classes][::-1], [c["boxes"] for c in classes][::-1])
    ax.set(title="boxes per class", xlabel="boxes")
    return _save(fig, out)


def _plot_objects(counts: np.ndarray, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    top = int(counts.max()) if counts.size else 0
    ax.hist(counts, bins=np.arange(top + 2) - 0.5, edgecolor="white")
    ax.set(title="objects per image", xlabel="boxes in the image", ylabel="images")
    return _save(fig, out)


def _plot_area(area: np.ndarray, stats: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lo, hi = max(float(area.min()), 1e-3), max(float(area.max()), 1e-3)
    bins = np.logspace(np.log10(lo) - 0.05, np.log10(hi) + 0.05, 40)
    ax.hist(area, bins=bins, edgecolor="white")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a narrow range
    for key, style in (("median", "-"), ("mean", "--")):
        ax.axvline(stats[key], color="k", ls=style, label=f"{key} {stats[key]:.0f} px²")
    for key in ("low_fence", "high_fence"):
        ax.axvline(stats[key], color="r", ls=":", label=key.replace("_", " "))
    ax.set(title="box area (log scale)", xlabel="area (px²)", ylabel="boxes")
    ax.legend(fontsize=8)
    return _save(fig, out)


def _plot_aspect(aspect: np.ndarray, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lo, hi = np.log2(max(float(aspect.min()), 1e-3)), np.log2(max(float(aspect.max()), 1e-3))
    ax.hist(aspect, bins=np.logspace(lo - 0.1, hi + 0.1, 40, base=2), edgecolor="white")
    ax.set_xscale("log", base=2)
    ax.set(title="aspect ratio (width / height)", xlabel="width / height", ylabel="boxes")
    return _save(fig, out)


def _plot_centers(heat: list[list[int]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    im = ax.imshow(np.asarray(heat), extent=(0, 1, 1, 0), cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="boxes")
    ax.set(title="box centres (image-normalised)", xlabel="x / width", ylabel="y / height")
    return _save(fig, out)


def _plot_sizes(sizes: np.ndarray, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    pairs, freq = np.unique(sizes, axis=0, return_counts=True)
    ax.scatter(pairs[:, 0], pairs[:, 1], s=12 + 60 * freq / freq.max(), alpha=0.6)
    ax.set(title="image sizes", xlabel="width (px)", ylabel="height (px)")
    return _save(fig, out)


def _plot_class_sizes(
    area: np.ndarray, labels: np.ndarray, ds: DetDataset, stats: dict[str, Any], out: Path
) -> Path:
    names = [c["name"] for c in stats["classes"] if c["boxes"]]  # most boxes first
    index = {n: k for k, n in enumerate(ds.class_names)}
    data = [np.sqrt(area[labels == index[n]]) for n in names]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(names) + 1)))
    ax.boxplot(data[::-1], vert=False, tick_labels=names[::-1])
    ax.set(title="box size per class", xlabel="sqrt(area) (px)")
    return _save(fig, out)


# ----------------------------------------------------------------------------- analyze


def _out_dir(out: str | Path | None, ds: DetDataset) -> Path:
    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(f"{path} exists and is not empty: choose a new folder")
        path.mkdir(parents=True, exist_ok=True)
        return path
    name = re.sub(r"[^\w.\-]+", "_", ds.root.name) or "data"
    return new_run_dir(Path("runs"), "detect", f"analysis-{name}")


def analyze(
    data: str | Path | DetDataset,
    *,
    out: str | Path | None = None,
    format: str | None = None,
) -> AnalysisResult:
    """Analyse a detection dataset (a path in any format, or a loaded DetDataset).

    Writes ``analysis.json``, one PNG per plot and ``report.html`` into ``out`` (default
    ``runs/detect/analysis-<data folder name>``, numbered rather than overwritten).
    """
    ds = data if isinstance(data, DetDataset) else load_dataset(data, format=format)
    out_dir = _out_dir(out, ds)
    stats = compute_stats(ds)
    arrays = stats.pop("_arrays")
    plots: dict[str, Path | None] = dict.fromkeys(
        ("classes", "objects", "area", "aspect", "centers", "sizes", "class_sizes")
    )
    if ds.images:
        plots["classes"] = _plot_classes(stats, out_dir / "class_distribution.png")
        plots["objects"] = _plot_objects(arrays["counts"], out_dir / "objects_per_image.png")
        plots["sizes"] = _plot_sizes(arrays["sizes"], out_dir / "image_sizes.png")
    if arrays["area"].size:
        plots["area"] = _plot_area(arrays["area"], stats["box_area"], out_dir / "box_area.png")
        plots["aspect"] = _plot_aspect(arrays["aspect"], out_dir / "aspect_ratio.png")
        heat = stats["box_centers"]["counts"]
        plots["centers"] = _plot_centers(heat, out_dir / "box_centers.png")
        plots["class_sizes"] = _plot_class_sizes(
            arrays["area"], arrays["labels"], ds, stats, out_dir / "class_box_sizes.png"
        )
    stats["plots"] = {k: p.name for k, p in plots.items() if p is not None}
    (out_dir / "analysis.json").write_text(
        json.dumps(stats, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    report = write_report(
        out_dir / "report.html", f"Detection dataset: {ds.root.name}", _sections(stats, plots)
    )
    return AnalysisResult(dir=out_dir, stats=stats, report=report)


def _img(plots: dict[str, Path | None], *keys: str) -> list[Path]:
    return [p for k in keys if (p := plots.get(k)) is not None]


def _sections(stats: dict[str, Any], plots: dict[str, Path | None]) -> list[Section]:
    d = stats["dataset"]
    overview = {k: v for k, v in d.items() if k != "splits"} | {
        f"split {k}": v for k, v in d["splits"].items()
    }
    area, aspect = stats["box_area"], stats["aspect_ratio"]
    sections = [
        Section("Overview", table=overview),
        Section(
            "Classes (sorted by boxes)",
            rows=[["class", "boxes", "images", "share"]]
            + [[c["name"], c["boxes"], c["images"], c["share"]] for c in stats["classes"]],
            images=_img(plots, "classes"),
        ),
        Section(
            "Objects per image",
            table={k: v for k, v in stats["objects_per_image"].items() if k != "histogram"},
            images=_img(plots, "objects"),
        ),
        Section(
            "Box area",
            text="Outliers: log10(area) beyond 1.5 interquartile ranges from the quartiles.",
            table=area or None,
            images=_img(plots, "area"),
        ),
        Section(
            "Aspect ratio (width / height)", table=aspect or None, images=_img(plots, "aspect")
        ),
        Section("Box centres", images=_img(plots, "centers")),
        Section(
            "Image sizes",
            rows=[["width", "height", "images"]] + stats["image_sizes"]["most_common"],
            images=_img(plots, "sizes"),
        ),
        Section(
            "Per-class box sizes",
            rows=[
                ["class", "boxes", "median area", "mean area", "median w", "median h", "median w/h"]
            ]
            + [
                [
                    c["name"],
                    c["boxes"],
                    c.get("area_median", ""),
                    c.get("area_mean", ""),
                    c["median_width"] if c["median_width"] is not None else "",
                    c["median_height"] if c["median_height"] is not None else "",
                    c["median_aspect"] if c["median_aspect"] is not None else "",
                ]
                for c in stats["per_class"]
            ],
            images=_img(plots, "class_sizes"),
        ),
    ]
    sections.append(
        _listing("Images without boxes", ["image"], [[f] for f in stats["images_without_boxes"]])
    )
    sections.append(
        _listing(
            "Box area outliers",
            ["image", "class", "box (xyxy)", "area", "kind"],
            [
                [o["file"], o["class"], o["box"], o["area"], o["kind"]]
                for o in stats["area_outliers"]
            ],
        )
    )
    sections.append(_listing("Problems", ["file", "problem"], stats["problems"]))
    return sections


def _listing(title: str, head: list[str], rows: list[list[Any]]) -> Section:
    if not rows:
        return Section(f"{title}: none")
    more = len(rows) - _LIST_LIMIT
    text = f"{len(rows)} in all" + (
        f"; the first {_LIST_LIMIT} here, all in analysis.json" if more > 0 else ""
    )
    return Section(f"{title} ({len(rows)})", rows=[head] + rows[:_LIST_LIMIT], text=text)
