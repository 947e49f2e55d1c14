"""Run directories: ``runs/<task>/<name>/`` holds everything a run made."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"


@dataclass
class Run:
    """A finished (or resumable) run: its directory, settings and best metrics."""

    dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | Run) -> Run:
        """A run from its directory or any file inside it."""
        if isinstance(path, Run):
            return path
        run_dir = run_dir_holding(path, CONFIG_FILE)
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
        results = run_dir / RESULTS_FILE
        best = json.loads(results.read_text()) if results.is_file() else {}
        return cls(run_dir, config, best)


def run_dir_holding(path: str | Path, name: str) -> Path:
    """The run directory (``path`` itself or the folder of a file in it) that holds ``name``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; {_known_runs()}")
    run_dir = path if path.is_dir() else path.parent
    if not (run_dir / name).is_file():
        raise FileNotFoundError(
            f"{path} is not a pixtell run ({name} missing); pass a run directory such as "
            f"runs/<task>/<name>; {_known_runs()}"
        )
    return run_dir


def _known_runs(root: Path = Path("runs"), limit: int = 12) -> str:
    """A short list of the runs under ``runs/`` of the working directory, for error messages."""
    found = sorted(str(p.parent) for p in root.glob(f"*/*/{CONFIG_FILE}")) if root.is_dir() else []
    if not found:
        return f"no runs under {root}/ yet (train one with `pixtell classify train DATA`)"
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return f"runs under {root}/: {', '.join(found[:limit])}{more}"


def new_run_dir(out: Path, task: str, name: str) -> Path:
    """A fresh ``out/task/name`` (``name-2``, ``name-3`` … when taken); never reuses one."""
    parent = Path(out) / task
    parent.mkdir(parents=True, exist_ok=True)
    if not re.fullmatch(r"[\w.\-]+", name):
        raise ValueError(f"run name {name!r} may contain only letters, digits, '.', '_' and '-'")
    candidate, n = parent / name, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = parent / f"{name}-{n}"
