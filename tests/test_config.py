"""Settings: defaults < YAML < flags; unknown keys fail; config.yaml reproduces a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pixtell.config import ClassifyTrainConfig, load_config, save_config


def test_flags_override_yaml_which_overrides_defaults(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("data: photos\nepochs: 7\nlr: 0.01\nmodel: resnet18\n")
    cfg = load_config(ClassifyTrainConfig, f, epochs=3, lr=None)
    assert cfg.epochs == 3  # flag wins
    assert cfg.lr == 0.01  # from YAML (None means "flag not given")
    assert cfg.model == "resnet18"
    assert cfg.batch_size == ClassifyTrainConfig.model_fields["batch_size"].default


def test_unknown_and_invalid_settings_are_errors(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("data: photos\nepoch: 7\n")  # typo
    with pytest.raises(ValueError, match="epoch"):
        load_config(ClassifyTrainConfig, f)
    with pytest.raises(ValueError, match="scheduler"):
        load_config(ClassifyTrainConfig, data="x", scheduler="linear")
    with pytest.raises(FileNotFoundError):
        load_config(ClassifyTrainConfig, tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(ClassifyTrainConfig, data="photos", seed=5, logger=["none"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(ClassifyTrainConfig, tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == 5
