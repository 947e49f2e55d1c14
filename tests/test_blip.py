"""BLIP captions with a tiny random BLIP saved to a temporary folder (no download)."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pixtell import caption
from pixtell.caption.blip import BlipCaptioner, evaluate_blip, load_blip
from pixtell.cli import app
from pixtell.data.demo import make_caption_scenes
from pixtell.metrics.caption import tokenize
from pixtell.models import WeightsUnavailableError

transformers = pytest.importorskip("transformers")
runner = CliRunner()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
# one DataLoader worker: the engine then leaves torch one thread (two spin on a busy machine)
FAST = dict(batch_size=8, num_workers=1, logger=["none"], progress=False, max_len=10, beam_size=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; more only contend with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 generated scenes, five captions each, in the Flickr8k Kaggle layout."""
    out = tmp_path_factory.mktemp("blip-data") / "scenes"
    return make_caption_scenes(out, n_images=24, img_size=32, seed=5, progress=False)


@pytest.fixture(scope="module")
def tiny_blip(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BLIP (text and vision hidden 32, 2 layers, 32 px images in 8 px patches)
    with a BERT word-piece tokenizer over the scenes' words, saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("tiny-blip")
    with open(scenes / "captions.txt", newline="") as f:
        words = {w for row in csv.DictReader(f) for w in tokenize(row["caption"])}
    words |= {"a", "photo", "of", "dog", "picture", ".", ",", ":"}  # BERT keeps punctuation
    vocab = SPECIALS + sorted(words) + ["##s"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(
        str(folder / "vocab.txt"), do_lower_case=True, bos_token="[DEC]"
    )
    image_processor = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    processor = transformers.BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    config = transformers.BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            encoder_hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            bos_token_id=ids("[DEC]"),
            pad_token_id=ids("[PAD]"),
            sep_token_id=ids("[SEP]"),
            eos_token_id=ids("[SEP]"),
        ),
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = transformers.BlipForConditionalGeneration(config)
    with torch.no_grad():  # like a trained BLIP, never write [PAD], [UNK], [CLS], [MASK], [DEC]
        model.text_decoder.cls.predictions.bias[ids(SPECIALS)] = -1e4
        model.text_decoder.cls.predictions.bias[ids("[SEP]")] = 0.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def captioner(tiny_blip: Path) -> BlipCaptioner:
    return BlipCaptioner.from_pretrained(tiny_blip, device="cpu")


def _images(scenes: Path, n: int) -> list[Path]:
    return sorted((scenes / "Images").glob("*.png"))[:n]


def _mean_logprob(
    cap: BlipCaptioner, image: Path, text: str, max_len: int, prefix: str = ""
) -> float:
    """Teacher-forced mean log-probability of the tokens BLIP added after ``prefix`` (with
    [SEP] unless it stopped at ``max_len``), from the model's forward pass: an independent
    check of generate's scores."""
    tok = cap.tokenizer
    ids = tok(text, return_tensors="pt")["input_ids"]
    ids[0, 0] = cap.model.config.text_config.bos_token_id
    n_prompt = len(tok(prefix)["input_ids"]) - 1 if prefix else 1  # [DEC] + prefix words
    if ids.shape[1] - 1 - n_prompt >= max_len:  # stopped by the length limit: no [SEP]
        ids = ids[:, : n_prompt + max_len]
    pixels = cap.pixels([Image.open(image).convert("RGB")])
    with torch.no_grad():
        logits = cap.model(pixel_values=pixels, input_ids=ids).logits[0]
    logp = logits[:-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    return float(logp[n_prompt - 1 :].mean())


def test_generates_with_and_without_a_prefix(captioner: BlipCaptioner, scenes: Path) -> None:
    paths = _images(scenes, 3)
    plain = captioner.caption(paths, beam_size=1, max_len=8)
    assert [len(p.captions) for p in plain] == [1, 1, 1]
    assert all(p.error is None and p.caption == p.caption.lower() for p in plain)
    for p in plain:  # greedy's score is the caption's mean token log-probability
        assert p.scores[0] == pytest.approx(
            _mean_logprob(captioner, p.path, p.caption, 8), abs=1e-4
        )
    guided = captioner.caption(paths, beam_size=3, max_len=6, prefix="A photo of a Dog")
    for g in guided:
        assert g.caption.startswith("a photo of a dog")
        assert len(tokenize(g.caption)) > 5  # BLIP went on after the prefix
    # one prefix per image: each image gets its own prompt, the rest unprompted
    mixed = captioner.caption(paths, beam_size=1, max_len=8, prefix=["a photo of", None, "a dog"])
    assert mixed[0].caption.startswith("a photo of") and mixed[2].caption.startswith("a dog")
    assert mixed[1].caption == plain[1].caption


def test_n_best_gives_distinct_candidates_ranked_by_score(
    captioner: BlipCaptioner, scenes: Path
) -> None:
    paths = _images(scenes, 2)
    results = captioner.caption(paths, beam_size=6, max_len=6, n_best=4, prefix="a picture of")
    for r in results:
        assert len(r.captions) == 4 and len(set(r.captions)) == 4
        assert r.scores == sorted(r.scores, reverse=True)
        for text, s in zip(r.captions, r.scores, strict=True):
            assert s == pytest.approx(
                _mean_logprob(captioner, r.path, text, 6, "a picture of"), abs=1e-4
            )
    best = captioner.caption(paths, beam_size=6, max_len=6, n_best=1, prefix="a picture of")
    assert [b.captions for b in best] == [r.captions[:1] for r in results]
    with pytest.raises(ValueError, match="n-best"):
        captioner.caption(paths, beam_size=2, n_best=3)


def test_unreadable_files_get_an_error_and_the_rest_go_on(
    captioner: BlipCaptioner, scenes: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = _images(scenes, 2)
    out = captioner.caption([good[0], broken, tmp_path / "missing.jpg", good[1]], batch_size=2)
    assert [o.error is None for o in out] == [True, False, False, True]
    assert out[1].error and out[2].error and not out[1].captions
    alone = captioner.caption([good[1]])
    assert out[3].captions == alone[0].captions


def test_offline_name_fails_in_one_sentence_before_any_run_dir(
    scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        load_blip("pixtell-tests/no-such-blip")
    text = str(info.value)
    assert "offline" in text and "--blip DIR" in text and len(re.findall(r"\. ", text)) == 0
    out = tmp_path / "runs"
    res = runner.invoke(
        app,
        f"caption train {scenes} --model blip --blip pixtell-tests/no-such --out {out}".split(),
    )
    assert res.exit_code == 2 and "--blip DIR" in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1
    assert not out.exists() or not any(out.rglob("*"))
    res = runner.invoke(
        app, ["caption", "evaluate", "--model", "blip", "--blip", "x/y", "--data", str(scenes)]
    )
    assert res.exit_code == 2 and "offline" in res.output


def test_pretrained_evaluate_and_cli_predict(tiny_blip: Path, scenes: Path, tmp_path: Path) -> None:
    res = evaluate_blip(
        tiny_blip, scenes, split="all", beam_size=2, max_len=6, out=tmp_path / "e", meteor=False
    )
    assert res.metrics["n"] == 24 and 0 <= res.metrics["Bleu_4"] <= 1
    preds = json.loads((res.dir / "predictions.json").read_text())
    assert len(preds) == 24 and res.report.is_file()
    image = _images(scenes, 1)[0]
    res = runner.invoke(
        app,
        f"caption predict --model blip --blip {tiny_blip} {image} {tmp_path / 'nope.png'} "
        "--n-best 2 --beam-size 3 --json --prefix".split()
        + ["a dog"],
    )
    assert res.exit_code == 1, res.output  # one file failed, the other was captioned
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert rows[0]["error"] is None and len(rows[0]["captions"]) == 2
    assert rows[0]["caption"] == rows[0]["captions"][0] and rows[0]["caption"].startswith("a dog")
    assert rows[1]["error"] and rows[1]["captions"] == []


def test_fine_tune_one_epoch_and_reload_for_predict(
    tiny_blip: Path, scenes: Path, tmp_path: Path
) -> None:
    run = caption.train(
        scenes, model="blip", blip=str(tiny_blip), epochs=1, out=tmp_path, name="b", **FAST
    )
    meta = json.loads((run.dir / "model.json").read_text())
    assert meta["arch"] == "blip" and (run.dir / meta["blip"] / "config.json").is_file()
    assert run.config["lr"] == pytest.approx(1e-5)  # BLIP's LR, recorded as used
    assert "best_val_bleu4" in run.best_metrics
    fine = BlipCaptioner.from_run(run, device="cpu")
    # the exported weights are the trained ones, not the starting checkpoint's
    start = BlipCaptioner.from_pretrained(tiny_blip, device="cpu").model.state_dict()
    now = fine.model.state_dict()
    key = "text_decoder.bert.embeddings.word_embeddings.weight"
    assert not torch.equal(start[key], now[key])
    assert torch.equal(now[key], now["text_decoder.cls.predictions.decoder.weight"])  # tied
    image = _images(scenes, 1)[0]
    preds = caption.predict(run, [image], beam_size=2)
    assert preds[0].error is None
    assert preds[0].caption == fine.caption([image], beam_size=2)[0].caption
    res = caption.evaluate(run, split="val", beam_size=2, meteor=False)
    assert res.metrics["n"] >= 1 and (res.dir / "metrics.json").is_file()
    # export / serve / profile rebuild registry models: a BLIP run is refused in one line
    from pixtell.models.io import load_model

    with pytest.raises(ValueError, match="caption predict"):
        load_model(run)
    report = (res.dir / "report.html").read_text(encoding="utf-8")
    assert "small_cnn" not in report  # the unused encoder setting is not shown for BLIP


def test_cli_predict_blip_guided_by_a_classifier(tiny_blip: Path, tmp_path: Path) -> None:
    """--model blip --guide: the classifier's label becomes BLIP's prefix when it is sure."""
    from pixtell import classify
    from pixtell.data.demo import make_classification_folder

    shapes = make_classification_folder(tmp_path / "shapes", n_per_class=6, img_size=32)
    clf = classify.train(
        shapes,
        model="tinyvgg_a",
        img_size=32,
        epochs=1,
        out=tmp_path,
        name="clf",
        progress=False,
        logger=["none"],
    )
    image = sorted((shapes / "circle").iterdir())[0]
    out = tmp_path / "guided"
    res = runner.invoke(
        app,
        f"caption predict --model blip --blip {tiny_blip} {image} --guide {clf.dir} "
        f"--tau 0 --beam-size 2 --n-best 2 --json --out {out}".split(),
    )
    assert res.exit_code == 0, res.output
    row = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("{")))
    assert row["label"] in classify.Classifier.from_run(clf).classes
    assert row["reason"] in ("agrees", "n_best", "guided", "template")  # tau 0: always sure
    if row["reason"] == "guided":
        assert row["caption"].startswith(f"a photo of a {row['label']}")
    assert (out / "decisions.jsonl").is_file()
