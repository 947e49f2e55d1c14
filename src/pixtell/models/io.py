"""Model files of a run: ``best.safetensors`` + ``model.json`` (never pickles)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from pixtell.models.registry import create
from pixtell.runs import Run, run_dir_holding

WEIGHTS_FILE = "best.safetensors"
META_FILE = "model.json"


def save_model(model: nn.Module, run_dir: Path, meta: dict[str, Any]) -> Path:
    """Write the weights as safetensors and the metadata (arch, classes, input) as JSON."""
    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, run_dir / WEIGHTS_FILE)
    (run_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return run_dir / WEIGHTS_FILE


def load_model(path: str | Path | Run) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a run (a ``Run``, its directory or a file in it) in eval mode,
    with its metadata."""
    run_dir = run_dir_holding(path.dir if isinstance(path, Run) else path, META_FILE)
    meta = json.loads((run_dir / META_FILE).read_text())
    if meta.get("arch") == "blip":
        raise ValueError(
            f"{run_dir} is a fine-tuned BLIP run: it works with `pixtell caption predict` and "
            "`pixtell caption evaluate` (export, serve and profile do not take BLIP runs yet)"
        )
    model = create(
        meta["arch"],
        meta["task"],
        num_classes=meta["num_classes"],
        pretrained=False,
        **meta.get("arch_kwargs", {}),
    )
    model.load_state_dict(load_file(run_dir / WEIGHTS_FILE))
    return model.eval(), meta
