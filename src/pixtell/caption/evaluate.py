"""``caption.evaluate``: really decoded captions of a held-out split scored against all
their references (COCO caption metrics), with per-image scores, examples and a report."""

from __future__ import annotations

import csv
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from pixtell.caption.data import CaptionImage, load_captions, read_split
from pixtell.caption.predict import Captioner
from pixtell.caption.train import SPLIT_FILE, VOCAB_FILE
from pixtell.data.images import ImageLoadError, load_image
from pixtell.metrics.caption import per_image_scores, perplexity, score
from pixtell.report import Section, contact_sheet, run_summary, write_report
from pixtell.runs import CONFIG_FILE, Run

console = Console(highlight=False, soft_wrap=True)
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.json"
PER_IMAGE_FILE = "per_image.csv"
EXAMPLES_FILE = "examples.html"
N_EXAMPLES = 12

METRIC_NAMES = {
    "Bleu_1": "BLEU-1",
    "Bleu_2": "BLEU-2",
    "Bleu_3": "BLEU-3",
    "Bleu_4": "BLEU-4",
    "METEOR": "METEOR",
    "ROUGE_L": "ROUGE-L",
    "CIDEr": "CIDEr-D",
    "NIST_2": "NIST-2",
    "NIST_4": "NIST-4",
    "perplexity": "Perplexity (teacher-forced, all references)",
    "n": "Images evaluated",
}


@dataclass
class EvalResult:
    """Where an evaluation wrote its files, and its metrics."""

    dir: Path
    metrics: dict[str, Any]
    report: Path


def _coco_id(image_id: str) -> int | str:
    """COCO results use integer ids; other datasets keep their file names."""
    return int(image_id) if image_id.isdigit() else image_id


def _split_images(run: Run, split: str, max_pixels: int) -> tuple[list[CaptionImage], list]:
    """The images of ``split`` as recorded in the run, and those no longer usable."""
    cfg = run.config
    ds = load_captions(
        cfg["data"],
        format=cfg.get("format"),
        images=cfg.get("images"),
        check_images=False,  # decoding reports unreadable files; no need to open all first
        max_pixels=max_pixels,
        progress=False,
    )
    known = len(ds.problems)
    splits = read_split(run.dir / SPLIT_FILE, ds)
    if split not in splits:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(splits)}")
    if not splits[split]:
        others = [k for k, v in splits.items() if v and k != split]
        raise ValueError(
            f"{run.dir} has an empty {split} split; try --split {others[-1] if others else 'val'}"
        )
    lost = [(str(p), r) for p, r in ds.problems[known:] if f"({split})" in r]
    return [ds.images[i] for i in splits[split]], lost


def evaluate(
    run: str | Path | Run,
    *,
    split: str = "test",
    beam_size: int = 3,
    out: str | Path | None = None,
    batch_size: int = 32,
    max_pixels: int | None = None,
    meteor: bool | None = None,
) -> EvalResult:
    """Decode ``split`` with beam search and score it against every reference caption.

    Writes ``metrics.json`` (pycocoevalcap's keys, NIST-2/4, teacher-forced perplexity),
    ``predictions.json`` (COCO results: ``image_id``, ``caption``), ``per_image.csv``,
    ``examples.html`` (best and worst images with their references) and ``report.html``
    into ``out`` (default ``RUN/eval`` for the test split, ``RUN/eval-<split>`` otherwise).
    ``meteor``: None runs METEOR when Java is there, False leaves it out (it starts a JVM).
    """
    if beam_size < 1:
        raise ValueError(f"--beam-size must be at least 1 (got {beam_size})")
    run = Run.load(run)
    from pixtell.caption.blip import evaluate_blip, is_blip_run  # blip.py imports this module

    if is_blip_run(run):  # a fine-tuned BLIP (``caption train --model blip``): no perplexity
        return evaluate_blip(
            run, split=split, beam_size=beam_size, out=out, batch_size=batch_size,
            max_pixels=max_pixels, meteor=meteor,
        )  # fmt: skip
    cap = Captioner.from_run(run, max_pixels=max_pixels)
    images, skipped = _split_images(run, split, cap.max_pixels)
    out_dir = Path(out) if out else run.dir / ("eval" if split == "test" else f"eval-{split}")
    out_dir.mkdir(parents=True, exist_ok=True)

    candidates: dict[int, str] = {}
    nll_sum, n_words = 0.0, 0
    paths = [im.path for im in images]
    for good, inputs, failed in cap.iter_batches(paths, batch_size):
        skipped += [(str(paths[i]), reason) for i, reason in failed.items()]
        if inputs is None:
            continue
        feats = cap.encode(inputs)
        for i, d in zip(good, cap.decode(feats, beam_size=beam_size), strict=True):
            candidates[i] = cap.vocab.decode(d.hypothesis.tokens)
        s, n = cap.nll(feats, [images[i].captions for i in good])
        nll_sum, n_words = nll_sum + s, n_words + n
    if not candidates:
        raise ValueError(f"no readable image in the {split} split of {run.dir}")

    ids = sorted(candidates)
    refs = {i: images[i].captions for i in ids}
    metrics: dict[str, Any] = score(refs, candidates, meteor=meteor, nist=True)
    metrics["perplexity"] = perplexity(nll_sum, n_words)
    metrics.update(n=len(ids), split=split, beam_size=beam_size, skipped=skipped)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    results = [{"image_id": _coco_id(images[i].image_id), "caption": candidates[i]} for i in ids]
    (out_dir / PREDICTIONS_FILE).write_text(json.dumps(results, indent=1, ensure_ascii=False))
    per_image = per_image_scores(refs, candidates)
    _write_per_image(out_dir / PER_IMAGE_FILE, images, candidates, per_image)
    examples = _examples_page(out_dir, run, images, candidates, per_image)
    report = _eval_report(run, out_dir, metrics, examples)
    console.print(
        f"BLEU-4 {metrics['Bleu_4']:.4f}  CIDEr {metrics['CIDEr']:.4f} on {len(ids)} "
        f"{split} images (beam {beam_size}) → {report}"
    )
    return EvalResult(out_dir, metrics, report)


def _write_per_image(
    path: Path,
    images: list[CaptionImage],
    candidates: dict[int, str],
    per_image: dict[Any, dict[str, float]],
) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "path", "caption", "Bleu_4", "ROUGE_L", "CIDEr", "references"])
        for i in sorted(candidates):
            s = per_image[i]
            w.writerow(
                [
                    images[i].image_id,
                    images[i].path,
                    candidates[i],
                    f"{s['Bleu_4']:.6f}",
                    f"{s['ROUGE_L']:.6f}",
                    f"{s['CIDEr']:.6f}",
                    " | ".join(images[i].captions),
                ]
            )


def _tile(path: Path, caption: str) -> tuple[np.ndarray, str] | None:
    try:
        thumb = np.asarray(load_image(path).resize((128, 128)))
    except ImageLoadError:
        return None
    return thumb, "\n".join(textwrap.wrap(caption or "(empty)", 26)[:3])


def _examples_page(
    out_dir: Path,
    run: Run,
    images: list[CaptionImage],
    candidates: dict[int, str],
    per_image: dict[Any, dict[str, float]],
) -> Path:
    """Best and worst images by CIDEr-D (then BLEU-4), with their references."""
    order = sorted(per_image, key=lambda i: (per_image[i]["CIDEr"], per_image[i]["Bleu_4"]))
    k = min(N_EXAMPLES, (len(order) + 1) // 2)
    sections = []
    for name, picked in (("best", order[::-1][:k]), ("worst", order[:k])):
        tiles = [t for i in picked if (t := _tile(images[i].path, candidates[i]))]
        sheet = contact_sheet(tiles, out_dir / f"{name}.png", cols=4)
        rows: list[list[object]] = [["image", "caption", "CIDEr-D", "BLEU-4", "references"]]
        rows += [
            [
                images[i].path.name,
                candidates[i],
                per_image[i]["CIDEr"],
                per_image[i]["Bleu_4"],
                " | ".join(images[i].captions),
            ]
            for i in picked
        ]
        sections.append(
            Section(f"{name.capitalize()} {k} images", rows=rows, images=[sheet] if sheet else [])
        )
    return write_report(
        out_dir / EXAMPLES_FILE, f"pixtell caption examples: {run.dir.name}", sections
    )


def _eval_report(run: Run, out_dir: Path, metrics: dict[str, Any], examples: Path) -> Path:
    cfg = run.config
    arch = {"encoder": cfg.get("encoder", ""), "attention": cfg.get("attention", "")}
    summary = run_summary(run, **({} if cfg.get("model") == "blip" else arch))
    table = {METRIC_NAMES.get(k, k): v for k, v in metrics.items() if k in METRIC_NAMES}
    sections = [
        Section("Run", table=summary),
        Section(
            f"Evaluation ({metrics['split']} split, beam {metrics['beam_size']})",
            table=table,
            text="Captions decoded by beam search, scored against all references of each "
            "image (BLEU, METEOR, ROUGE-L and CIDEr-D as the COCO caption toolkit).",
        ),
        Section(
            "Best and worst images",
            images=[p for p in (out_dir / "best.png", out_dir / "worst.png") if p.is_file()],
            links=[examples],
        ),
        Section("Training", images=[run.dir / "curves.png"], table=run.best_metrics or None),
        Section(
            "Files",
            links=[out_dir / name for name in (METRICS_FILE, PREDICTIONS_FILE, PER_IMAGE_FILE)]
            + [run.dir / "metrics.csv", run.dir / CONFIG_FILE, run.dir / VOCAB_FILE],
        ),
    ]
    if metrics["skipped"]:
        sections.append(Section("Skipped files", rows=[["file", "reason"], *metrics["skipped"]]))
    title = f"pixtell caption: {run.dir.name}"
    report = write_report(out_dir / "report.html", title, sections)
    write_report(run.dir / "report.html", title, sections)
    return report
