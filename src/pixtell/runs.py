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
        path = Path(path)
        run_dir = path if path.is_dir() else path.parent
        if not (run_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not a pixtell run directory ({CONFIG_FILE} missing); pass a "
                "directory such as runs/classify/<name>"
            )
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
        results = run_dir / RESULTS_FILE
        best = json.loads(results.read_text()) if results.is_file() else {}
        return cls(run_dir, config, best)

    def path(self, name: str) -> Path:
        return self.dir / name


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
