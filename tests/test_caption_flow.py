"""Captioning through the shared run flow: train, evaluate, predict, resume rules, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from pixtell import caption
from pixtell.caption.data import load_captions, read_split
from pixtell.cli import app
from pixtell.data.demo import make_caption_scenes
from pixtell.metrics.caption import score, tokenize
from pixtell.models import create

runner = CliRunner()
FAST = dict(
    img_size=32,
    batch_size=8,
    num_workers=0,
    logger=["none"],
    progress=False,
    min_word_count=1,
    embed_dim=16,
    hidden_dim=32,
    attention_dim=16,
    max_len=12,
    beam_size=2,
)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 generated scenes of 1..3 shapes, five captions each (Flickr8k Kaggle layout)."""
    out = tmp_path_factory.mktemp("caption-data") / "scenes"
    return make_caption_scenes(out, n_images=30, img_size=32, seed=3, progress=False)


@pytest.fixture(scope="module")
def run(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> caption.Run:
    """One epoch of show_attend_tell with a from-scratch encoder (read-only for the tests)."""
    out = tmp_path_factory.mktemp("caption-runs")
    return caption.train(scenes, epochs=1, out=out, name="sat", **FAST)


def _split_images(run: caption.Run, split: str) -> list:
    ds = load_captions(run.config["data"], progress=False)
    return [ds.images[i] for i in read_split(run.dir / "split.json", ds)[split]]


def test_run_holds_the_model_with_its_vocabulary(run: caption.Run) -> None:
    d = run.dir
    for name in ("config.yaml", "split.json", "vocab.json", "best.safetensors", "model.json"):
        assert (d / name).is_file(), name
    meta = json.loads((d / "model.json").read_text())
    assert meta["task"] == "caption" and meta["arch"] == "show_attend_tell"
    assert meta["vocab"] == "vocab.json"
    vocab = caption.Vocabulary.load(d / meta["vocab"])
    assert meta["num_classes"] == len(vocab)
    # the vocabulary comes from the training split's captions only
    train_words = {
        w for im in _split_images(run, "train") for c in im.captions for w in tokenize(c)
    }
    assert set(vocab.itos[4:]) <= train_words
    assert "best_val_bleu4" in run.best_metrics and run.best_metrics["epochs_completed"] == 1
    weights = load_file(d / "best.safetensors")
    assert weights["embed.weight"].shape[0] == len(vocab)
    cap = caption.Captioner.from_run(d)
    assert cap.vocab == vocab and cap.has_attention


def test_evaluate_scores_real_decoding_against_all_references(
    run: caption.Run, tmp_path: Path
) -> None:
    res = caption.evaluate(run, beam_size=2, out=tmp_path / "eval", meteor=False)
    test = _split_images(run, "test")
    assert test and res.metrics["n"] == len(test)
    # captions really decoded from the images (not teacher forced): the same as predict's
    preds = json.loads((res.dir / "predictions.json").read_text())
    assert [set(p) for p in preds] == [{"image_id", "caption"}] * len(test)
    by_id = {p["image_id"]: p["caption"] for p in preds}
    again = caption.predict(run, [im.path for im in test], beam_size=2)
    assert {p.path.name: p.caption for p in again} == {
        im.image_id: by_id[im.image_id] for im in test
    }
    # every reference of each image is used (five per scene)
    refs = {im.image_id: im.captions for im in test}
    assert all(len(r) == 5 for r in refs.values())
    expected = score(refs, by_id, meteor=False, nist=True)
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr", "NIST_4"):
        assert res.metrics[key] == pytest.approx(expected[key], abs=1e-9)
    assert res.metrics["perplexity"] > 1
    saved = json.loads((res.dir / "metrics.json").read_text())
    assert saved["Bleu_4"] == pytest.approx(res.metrics["Bleu_4"])
    lines = (res.dir / "per_image.csv").read_text().splitlines()
    assert len(lines) == len(test) + 1
    page = (res.dir / "examples.html").read_text()
    assert test[0].captions[0].split()[-1] in page  # references are shown
    assert res.report.is_file() and "BLEU-4" in res.report.read_text()


def test_evaluate_reports_an_unreadable_image_and_goes_on(run: caption.Run, tmp_path: Path) -> None:
    data = shutil.copytree(run.config["data"], tmp_path / "data")
    copy = shutil.copytree(run.dir, tmp_path / "run")
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump({**cfg, "data": str(data)}))
    test = _split_images(caption.Run.load(copy), "test")
    (data / "Images" / test[0].path.name).write_bytes(b"not an image")
    res = caption.evaluate(copy, beam_size=2, meteor=False)
    assert res.metrics["n"] == len(test) - 1
    assert [Path(p).name for p, _ in res.metrics["skipped"]] == [test[0].path.name]
    assert "Skipped files" in res.report.read_text()


def test_predict_attention_png_per_image_and_errors_go_on(run: caption.Run, tmp_path: Path) -> None:
    images = [im.path for im in _split_images(run, "val")]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "att"
    out.mkdir()
    mine = out / f"{images[0].stem}.png"
    mine.write_bytes(b"user file")  # never overwritten
    preds = caption.predict(
        run, [*images, broken, tmp_path / "missing.png"], beam_size=2, attention=True, out=out
    )
    by_path = {p.path: p for p in preds}
    assert by_path[broken].error and by_path[tmp_path / "missing.png"].error
    for path in images:
        p = by_path[path]
        assert p.error is None and p.attention is not None and p.attention.is_file()
        assert p.attention.parent == out and p.attention != mine
        assert len(p.words) >= 1
        with Image.open(p.attention) as im:
            assert im.format == "PNG" and im.width > 100
    assert mine.read_bytes() == b"user file"


def test_resume_refuses_a_changed_model_and_trains_longer(run: caption.Run, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run.dir, copy)
    before = (copy / "config.yaml").read_bytes()
    with pytest.raises(ValueError, match="--model"):
        caption.train(resume=copy, model="show_tell", epochs=2)
    with pytest.raises(ValueError, match="--min-word-count"):
        caption.train(resume=copy, min_word_count=3, epochs=2)
    assert (copy / "config.yaml").read_bytes() == before
    resumed = caption.train(resume=copy, epochs=2)
    assert resumed.best_metrics["epochs_completed"] == 2
    assert yaml.safe_load((copy / "config.yaml").read_text())["epochs"] == 2


def test_frozen_encoder_trains_from_the_feature_cache(scenes: Path, tmp_path: Path) -> None:
    encoder = create("small_cnn", "classify", num_classes=3)
    save_file(encoder.state_dict(), tmp_path / "encoder.safetensors")
    cache = tmp_path / "cache"
    run = caption.train(
        scenes,
        model="show_tell",
        weights=tmp_path / "encoder.safetensors",
        cache_dir=cache,
        epochs=1,
        out=tmp_path,
        **FAST,
    )
    shards = list(cache.glob("*/*.npy"))
    assert shards and sum(len(np.load(s)) for s in shards) == 30
    # frozen: the exported encoder is exactly the weights file
    saved = load_file(run.dir / "best.safetensors")
    for k, v in encoder.state_dict().items():
        if k.startswith("features."):
            assert torch.equal(saved[f"encoder.body.{k}"], v), k
    with pytest.raises(ValueError, match="no attention"):
        caption.predict(run, [next((scenes / "Images").iterdir())], attention=True)


def test_cli_train_help_and_predict_json(run: caption.Run, tmp_path: Path) -> None:
    res = runner.invoke(app, ["caption", "train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for flag in (
        "--model",
        "--encoder",
        "--attention",
        "--min-word-count",
        "--beam-size",
        "--resume",
    ):
        assert flag in res.output, flag
    image = _split_images(run, "val")[0].path
    res = runner.invoke(
        app, ["caption", "predict", str(run.dir), str(image), str(tmp_path / "nope.png"), "--json"]
    )
    assert res.exit_code == 1  # one file failed, the other was captioned
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [set(r) for r in rows] == [{"path", "caption", "error"}] * 2
    assert [r["error"] is None for r in rows] == [True, False]
    res = runner.invoke(app, ["caption", "evaluate", str(tmp_path / "no-run")])
    assert res.exit_code == 2 and "error" in res.output


@pytest.mark.slow
def test_ddp_two_processes_with_a_cached_frozen_encoder(scenes: Path, tmp_path: Path) -> None:
    """A real 2-process DDP run (gloo on CPU) through the CLI; workers join the one run."""
    encoder = create("small_cnn", "classify", num_classes=3)
    save_file(encoder.state_dict(), tmp_path / "encoder.safetensors")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PIXTELL_RUN_DIR", None)
    flags = [
        f"--{k.replace('_', '-')}={v}" for k, v in FAST.items() if k not in ("logger", "progress")
    ]
    cmd = [sys.executable, "-m", "pixtell.cli", "caption", "train", str(scenes), *flags]
    cmd += ["--logger", "none", "--no-progress", "--epochs", "2", "--out", str(tmp_path)]
    cmd += ["--name", "ddp", "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu"]
    cmd += ["--weights", str(tmp_path / "encoder.safetensors"), "--cache-dir", str(tmp_path / "c")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "distributed over 2 processes" in proc.stdout
    assert [r.name for r in (tmp_path / "caption").iterdir()] == ["ddp"]
    results = json.loads((tmp_path / "caption" / "ddp" / "results.json").read_text())
    assert results["epochs_completed"] == 2 and "best_val_bleu4" in results


def test_decoded_images_give_the_batches_of_decoding_every_epoch(
    scenes: Path, run: caption.Run, tmp_path: Path
) -> None:
    """--cache ram / disk feed the model what decoding each epoch (--cache none) does."""
    from pixtell.caption.train import CaptionRecipe
    from pixtell.config import CaptionTrainConfig

    settings = {k: v for k, v in FAST.items() if k not in ("logger", "progress")}
    batches = {}
    for mode in ("none", "ram", "disk"):
        cfg = CaptionTrainConfig(
            data=scenes, cache=mode, cache_dir=tmp_path, progress=False, **settings
        )
        recipe = CaptionRecipe()
        data = recipe.prepare(cfg)
        recipe.build_module(cfg, data)
        dm = recipe.build_datamodule(cfg, data)
        assert (dm.pixels is None) == (mode == "none")
        train = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
        val = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
        batches[mode] = (train, val)
    assert list((tmp_path / "decoded").glob("*.npy"))  # the memory-mapped copy
    for mode in ("ram", "disk"):
        (train, val), (train0, val0) = batches[mode], batches["none"]
        assert train[0].dtype == torch.float32 and train[0].shape == train0[0].shape
        assert torch.allclose(train[0], train0[0], atol=1e-6)
        assert torch.equal(train[1], train0[1]) and torch.equal(train[2], train0[2])
        assert torch.allclose(val[0], val0[0], atol=1e-6) and torch.equal(val[1], val0[1])
    # and a run trains the same (the ``run`` fixture used --cache auto: ram at 32 px)
    none = caption.train(scenes, epochs=1, out=tmp_path, name="none", cache="none", **FAST)
    assert run.config["cache"] == "auto"
    assert run.best_metrics["val_loss"] == pytest.approx(none.best_metrics["val_loss"], abs=1e-4)
