"""The demo runs every task on generated data and writes one report (tiny settings here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixtell import demo


def test_each_part_trains_evaluates_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = [
        demo.classify_part(tmp_path, n_per_class=12, epochs=1, progress=False),
        demo.detect_part(
            tmp_path, n_images=24, epochs=1, img_size=64, batch_size=8, progress=False
        ),
        demo.caption_part(tmp_path, n_images=30, epochs=1, progress=False),
    ]
    parts.append(demo.guided_part(tmp_path, parts[0].run, n_images=30, epochs=1, progress=False))
    for part in parts:
        assert part.report.is_file() and part.metrics, part.task
        assert all(0 <= v <= 1 for v in part.metrics.values() if isinstance(v, float))
        assert all(p.is_file() for p in part.images), part.task
    assert "blind baseline BLEU-4" in parts[2].metrics
    assert {"CHAIR_s", "mention_rate", "Bleu_4"} <= set(parts[3].metrics)  # before → after


def test_unknown_task_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--task"):
        demo.run_demo(tmp_path, task="segment")
