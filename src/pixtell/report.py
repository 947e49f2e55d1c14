"""HTML reports and the matplotlib figures they link, shared by all tasks."""

from __future__ import annotations

import base64
import csv
import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed; figures only go to PNG files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pixtell.runs import CONFIG_FILE  # noqa: E402


@dataclass
class Section:
    """A block of the report: a heading, optional key/value table, figures and raw HTML."""

    title: str
    table: Mapping[str, object] | None = None
    rows: Sequence[Sequence[object]] | None = None  # a grid, first row is the header
    images: Sequence[Path] = field(default_factory=list)
    links: Sequence[Path] = field(default_factory=list)
    text: str = ""


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}img{max-width:100%;margin:.5em 0;border:1px solid #eee}
td:first-child{text-align:left}"""


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _embedded(png: Path) -> str:
    """A PNG as a data URI, so the report is one file that can be mailed."""
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def run_summary(run: Any, **extra: object) -> dict[str, object]:
    """What a reader of a report needs to know about the run (a ``runs.Run``)."""
    cfg, res = run.config, run.best_metrics
    summary: dict[str, object] = {
        "run": str(run.dir),
        "data": str(cfg.get("data", "")),
        "model": cfg.get("model", ""),
        "image size": cfg.get("img_size") or "model default",
        "epochs": f"{res.get('epochs_completed', '?')} of "
        f"{int(cfg.get('epochs', 0)) + int(cfg.get('fine_tune_epochs', 0) or 0)}",
    }
    if "train_seconds" in res:
        summary["training time"] = f"{float(res['train_seconds']) / 60:.1f} min"
    if "finished" in res:
        summary["finished"] = res["finished"]
    summary.update(extra)
    return summary


def training_section(run: Any, *links: Path) -> Section:
    """The curves, best metrics and files of a run (a ``runs.Run``), for every task's report."""
    files = [run.dir / "metrics.csv", run.dir / CONFIG_FILE, *links]
    return Section(
        "Training", images=[run.dir / "curves.png"], table=run.best_metrics or None, links=files
    )


def write_report(path: Path, title: str, sections: Sequence[Section]) -> Path:
    """Write a self-contained HTML page: figures embedded, links relative to it."""
    path = Path(path)
    base = path.parent

    def rel(p: Path) -> str:
        return html.escape(Path(os.path.relpath(Path(p).resolve(), base.resolve())).as_posix())

    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style><h1>{html.escape(title)}</h1>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        if s.table:
            parts.append(
                "<table>"
                + "".join(
                    f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>"
                    for k, v in s.table.items()
                )
                + "</table>"
            )
        if s.rows:
            head, *body = s.rows
            parts.append(
                "<table><tr>"
                + "".join(f"<th>{_fmt(h)}</th>" for h in head)
                + "</tr>"
                + "".join(
                    "<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in body
                )
                + "</table>"
            )
        parts += [
            f"<p><img src='{_embedded(p)}' alt='{html.escape(Path(p).name)}'></p>"
            for p in s.images
            if Path(p).exists()
        ]
        if s.links:
            parts.append(
                "<ul>"
                + "".join(
                    f"<li><a href='{rel(p)}'>{html.escape(Path(p).name)}</a></li>" for p in s.links
                )
                + "</ul>"
            )
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def read_metrics_csv(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Lightning's CSV log as ``{metric: [(epoch, value), ...]}`` (empty cells dropped)."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = float(row.get("epoch") or "nan")
            for k, v in row.items():
                if k not in ("epoch", "step") and v not in ("", None):
                    series.setdefault(k, []).append((epoch, float(v)))
    return series


def plot_training_curves(metrics_csv: Path, out: Path) -> Path | None:
    """Loss and accuracy per epoch (train vs val) as one PNG; None if nothing was logged."""
    if not Path(metrics_csv).is_file():
        return None
    s = read_metrics_csv(metrics_csv)
    panels = [
        ("loss", ["train_loss_epoch", "val_loss"]),
        ("accuracy", ["train_acc", "val_acc", "val_top5"]),
        ("mAP", ["val_map", "val_map_50", "val_map_75"]),
        ("BLEU-4 (decoded)", ["val_bleu4"]),
    ]
    panels = [(t, [k for k in keys if k in s]) for t, keys in panels]
    panels = [(t, keys) for t, keys in panels if keys]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels, strict=True):
        for k in keys:
            xs, ys = zip(*s[k], strict=True)
            ax.plot(np.asarray(xs) + 1, ys, marker="o", ms=3, label=k.removesuffix("_epoch"))
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]],
    class_names: Sequence[str],
    out: Path,
    xlabel: str = "predicted",
    ylabel: str = "true",
) -> Path:
    """Counts and row-normalised confusion matrices side by side."""
    cm_a = np.asarray(cm, dtype=float)
    norm = cm_a / np.maximum(cm_a.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    size = max(4.5, 0.45 * n + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, mat, title, fmt in (
        (axes[0], cm_a, "counts", "{:.0f}"),
        (axes[1], norm, "row-normalised", "{:.2f}"),
    ):
        ax.imshow(mat, cmap="Blues", vmin=0)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xticks=range(n), yticks=range(n))
        ax.set_xticklabels(class_names, rotation=45, ha="right")
        ax.set_yticklabels(class_names)
        if n <= 30:
            thresh = mat.max() / 2 if mat.max() else 1
            for i in range(n):
                for j in range(n):
                    ax.text(
                        j,
                        i,
                        fmt.format(mat[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if mat[i, j] > thresh else "black",
                    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def contact_sheet(
    items: Sequence[tuple[np.ndarray, str]], out: Path, cols: int = 6, title: str = ""
) -> Path | None:
    """A grid of images with a caption under each; None when there is nothing to show."""
    if not items:
        return None
    rows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, caption) in zip(axes.flat, items, strict=False):
        ax.imshow(img)
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
