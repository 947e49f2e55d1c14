"""``classify.zero_shot``: a classifier from class names alone, with CLIP (no training).

The run it makes looks like a trained one: ``model.json`` + ``best.safetensors`` hold a
``clip_linear`` model whose weights are the class-name text embeddings (prompt ensembles)
times CLIP's logit scale, so ``softmax(W x)`` is CLIP's own zero-shot distribution over the
classes. ``split.json`` puts every image in the test split; ``classify.evaluate`` writes the
usual metrics and report, and the run can be the ``--model`` of ``predict`` and ``sort``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import torch
import yaml

from pixtell.classify.evaluate import evaluate
from pixtell.classify.train import SPLIT_FILE
from pixtell.data.folders import scan_image_folder, write_split
from pixtell.data.images import DEFAULT_MAX_PIXELS
from pixtell.models import create, get_spec, save_model
from pixtell.models.clip import DEFAULT_CLIP, DEFAULT_TEMPLATES, check_templates, load_clip
from pixtell.runs import CONFIG_FILE, RESULTS_FILE, Run, new_run_dir


def class_prompt_name(folder: str) -> str:
    """The words a folder name stands for in a prompt: ``traffic_light`` → ``traffic light``."""
    return " ".join(folder.replace("_", " ").replace("-", " ").split())


def zero_shot(
    data: str | Path,
    *,
    clip: str = DEFAULT_CLIP,
    prompts: Sequence[str] = DEFAULT_TEMPLATES,
    out: str | Path = "runs",
    name: str | None = None,
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> Run:
    """Zero-shot CLIP classification of ``DATA/<class>/<image>``, evaluated on every image.

    ``prompts`` are templates with one ``{}`` for the class name (several: a prompt
    ensemble). Returns the new run (under ``out/classify/``), already evaluated.
    """
    templates = check_templates(prompts)
    scan = scan_image_folder(
        data, fractions=(1.0, 0.0, 0.0), max_pixels=max_pixels, progress=progress
    )
    if len(scan.classes) < 2:
        raise ValueError(f"{data} needs at least two class folders (DATA/<class>/<image>)")
    everything = [s for split in scan.splits.values() for s in split]
    scan = dataclasses.replace(
        scan, splits={"train": [], "val": [], "test": everything}, fractions=(0.0, 0.0, 1.0)
    )
    encoder = load_clip(clip)  # an unavailable checkpoint fails before the run directory
    text = encoder.class_embeddings([class_prompt_name(c) for c in scan.classes], templates)
    model = create("clip_linear", num_classes=len(scan.classes), clip_dim=encoder.dim)
    with torch.no_grad():
        model.classifier.weight.copy_(text * encoder.logit_scale)
        model.classifier.bias.zero_()
    # encode the images now with the loaded model: evaluate then only reads the cache
    encoder.features([s.path for s in everything], batch_size=batch_size, progress=progress)

    run_dir = new_run_dir(Path(out), "classify", name or "zero-shot")
    write_split(run_dir / SPLIT_FILE, scan)
    settings = {
        "data": str(Path(data).resolve()),
        "model": "clip_linear",
        "zero_shot": True,
        "clip": encoder.name,
        "prompts": templates,
        "epochs": 0,
        "max_pixels": max_pixels,
    }
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(settings, sort_keys=False))
    spec = get_spec("clip_linear", "classify")
    save_model(
        model,
        run_dir,
        {
            "task": "classify",
            "arch": "clip_linear",
            "num_classes": len(scan.classes),
            "class_names": scan.classes,
            "img_size": spec.input_size,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "max_pixels": max_pixels,
            "arch_kwargs": {"clip_dim": encoder.dim},
            "clip": encoder.name,
            "clip_key": encoder.key,
            "zero_shot": {"prompts": templates},
        },
    )
    results = {
        "epochs_completed": 0,
        "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    evaluate(run_dir, batch_size=batch_size)
    return Run.load(run_dir)
