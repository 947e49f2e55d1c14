"""Shared fixtures: a small generated shapes dataset and one trained run per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pixtell import classify
from pixtell.data.demo import make_classification_folder

FAST = dict(
    model="tinyvgg_a",
    img_size=32,
    batch_size=32,
    num_workers=0,
    logger=["none"],
    progress=False,
    lr=3e-3,
)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Feature and decoded-image caches of the tests stay out of the user's ~/.cache."""
    os.environ.setdefault("PIXTELL_CACHE", str(tmp_path_factory.mktemp("pixtell-cache")))


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 shape classes × 15 images at 32 px (fast to train on)."""
    out = tmp_path_factory.mktemp("data") / "shapes"
    return make_classification_folder(out, n_per_class=15, img_size=32, seed=1, progress=False)


@pytest.fixture(scope="session")
def trained_run(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> classify.Run:
    """A 2-epoch run, shared by the evaluate / predict / sort tests (read-only)."""
    out = tmp_path_factory.mktemp("runs")
    return classify.train(shapes_dir, epochs=2, out=out, name="shared", **FAST)
