"""CLIP features, the hybrid classifier, the CLIP linear probe and zero-shot classification.

Every CLIP here is a tiny random one saved with ``save_pretrained`` and loaded back with
``from_pretrained`` (no download).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import pre_tokenizers
from torchvision import models as tvm
from typer.testing import CliRunner

from pixtell import classify, engine
from pixtell.cli import app
from pixtell.data.demo import make_classification_folder
from pixtell.models import WeightsUnavailableError, load_model
from pixtell.models import clip as clip_mod
from pixtell.models.clip import check_templates, load_clip

PROJ = 16  # projection_dim of the tiny CLIP
CNN_DIM = tvm.mobilenet_v3_large().classifier[0].in_features  # torchvision's pooled width: 960
FAST = dict(
    img_size=32,
    batch_size=32,
    num_workers=0,
    logger=["none"],
    progress=False,
    pretrained=False,
)


def _save_tiny_clip(out: Path) -> Path:
    """A randomly initialised CLIP (hidden 32, 2 layers, 32 px, patch 8) with a byte-level
    CLIP tokenizer (every byte a token, no merges) and a 32 px processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    words = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {w: i for i, w in enumerate(words)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(vocab),
            max_position_embeddings=64,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=PROJ,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(out)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 shape classes × 4 images at 32 px."""
    out = tmp_path_factory.mktemp("data") / "shapes"
    return make_classification_folder(out, n_per_class=4, img_size=32, seed=3, progress=False)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test starts with an empty feature cache of its own, and trains on one thread."""
    monkeypatch.setenv("PIXTELL_CACHE", str(tmp_path / "cache"))
    # On a shared 2-core machine two spinning OpenMP threads made one MobileNetV3 run ~7x
    # slower than one thread (27.6 s vs 4.0 s measured); the engine would pick two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(engine, "share_cpus", lambda num_workers: torch.set_num_threads(1))
    yield tmp_path / "cache"
    torch.set_num_threads(threads)


@pytest.fixture
def encode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Number of images per call of the CLIP image encoder."""
    calls: list[int] = []
    original = clip_mod.ClipEncoder.embed_images

    def counted(self: clip_mod.ClipEncoder, images: list) -> torch.Tensor:
        calls.append(len(images))
        return original(self, images)

    monkeypatch.setattr(clip_mod.ClipEncoder, "embed_images", counted)
    return calls


class _Batches(L.Callback):
    """The first training batch's structure and the CNN's trainability per epoch."""

    def __init__(self) -> None:
        self.first: object = None
        self.cnn_trainable: list[bool] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.first is None:
            x, _ = batch
            self.first = [t.shape for t in x] if isinstance(x, list | tuple) else x.shape
        feats = getattr(module.net, "features", None)
        if batch_idx == 0 and feats is not None:
            self.cnn_trainable.append(any(p.requires_grad for p in feats.parameters()))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _n_images(run: classify.Run) -> int:
    split = json.loads((run.dir / "split.json").read_text())["splits"]
    return sum(len(v) for v in split.values())


# -- models ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "width"), [("hybrid", CNN_DIM + PROJ), ("cnn", CNN_DIM), ("clip", PROJ)]
)
def test_modes_train_with_documented_feature_sizes(
    mode: str, width: int, shapes_dir: Path, tiny_clip: Path, tmp_path: Path
) -> None:
    seen = _Batches()
    two_stage = dict(freeze_backbone=True, fine_tune_epochs=1) if mode == "hybrid" else {}
    run = classify.train(
        shapes_dir,
        model="hybrid",
        mode=mode,
        clip=str(tiny_clip),
        epochs=1,
        out=tmp_path,
        callbacks=[seen],
        **two_stage,
        **FAST,
    )
    n_train = len(json.loads((run.dir / "split.json").read_text())["splits"]["train"])
    net, meta = load_model(run)
    assert net.feature_dim == width
    image, feats = torch.rand(3, 3, 32, 32), _unit(torch.randn(3, PROJ))
    assert net.embed(image, feats).shape == (3, width)
    assert net(image, feats).shape == (3, 6)
    assert meta["arch_kwargs"]["mode"] == mode
    if mode == "cnn":  # plain image batches; no CLIP loaded or recorded
        assert seen.first == torch.Size([n_train, 3, 32, 32])
        assert "clip" not in meta
    else:
        assert seen.first[1] == torch.Size([n_train, PROJ])
        assert meta["clip"] == str(tiny_clip.resolve()) and meta["arch_kwargs"]["clip_dim"] == PROJ
    if mode == "clip":  # nothing decodes the pixels for a CLIP-only model
        assert seen.first[0] == torch.Size([n_train, 0])
    if mode == "hybrid":  # --freeze-backbone: CNN frozen in stage 1, fine-tuned in stage 2
        assert seen.cnn_trainable == [False, True]
    results = json.loads((run.dir / "results.json").read_text())
    assert results["epochs_completed"] == (2 if mode == "hybrid" else 1)
    preds = classify.predict(run, [shapes_dir / "circle" / "circle_0000.png"], topk=2)
    assert preds[0].error is None and abs(sum(p for _, p in preds[0].topk) - 1) < 1.0


def test_clip_linear_probe_and_feature_cache_hit(
    shapes_dir: Path, tiny_clip: Path, tmp_path: Path, encode_calls: list[int]
) -> None:
    run = classify.train(
        shapes_dir, model="clip_linear", clip=str(tiny_clip), epochs=1, out=tmp_path, **FAST
    )
    n = _n_images(run)
    assert sum(encode_calls) == n  # every image encoded once
    net, _ = load_model(run)
    assert [type(m) for m in net.modules()] == [clip_mod.ClipLinear, torch.nn.Linear]
    assert net.classifier.in_features == PROJ

    encode_calls.clear()
    classify.train(
        shapes_dir, model="clip_linear", clip=str(tiny_clip), epochs=1, out=tmp_path, **FAST
    )
    assert encode_calls == []  # second run: all from the cache
    resumed = classify.train(resume=run.dir, epochs=2)
    assert encode_calls == [] and resumed.best_metrics["epochs_completed"] == 2
    classify.evaluate(run)
    assert encode_calls == []  # its test images too

    new = tmp_path / "new"
    make_classification_folder(new, n_per_class=1, img_size=40, seed=7, progress=False)
    preds = classify.predict(run, new, recursive=True, topk=6, tta="flip")
    assert sum(encode_calls) == 6 and all(p.error is None for p in preds)
    # each image got its own features in the batch: the probe applied to CLIP's embedding
    enc = load_clip(str(tiny_clip), text=False)
    with torch.no_grad():
        logits = net(None, enc.embed_images([Image.open(p.path).convert("RGB") for p in preds]))
    classes = json.loads((run.dir / "model.json").read_text())["class_names"]
    probs = logits.softmax(-1)
    assert torch.cdist(probs, probs).fill_diagonal_(1).min() > 1e-3  # images tell apart
    for p, expected in zip(preds, probs, strict=True):
        got = dict(p.topk)
        assert [got[c] for c in classes] == pytest.approx(expected.tolist(), abs=1e-4)


def test_cache_key_follows_the_weights(tiny_clip: Path, tmp_path: Path) -> None:
    a = load_clip(str(tiny_clip))
    b = load_clip(str(tiny_clip), text=False)
    assert a.key == b.key and a.dim == b.dim == PROJ  # image features need only the vision tower
    with torch.no_grad():
        a.model.visual_projection.weight.add_(1e-3)
    a.__dict__.pop("digest"), a.__dict__.pop("key")
    assert a.key != b.key


def test_embeddings_are_normalised_projections(tiny_clip: Path) -> None:
    """Ours equal transformers' own ``get_*_features`` (normalised); ensembles are renormalised
    means of the normalised template embeddings."""
    enc = load_clip(str(tiny_clip))
    images = [Image.new("RGB", (40, 30), (255 * i // 3, 90, 30)) for i in range(3)]
    ours = enc.embed_images(images)
    inputs = enc.processor(images=images, return_tensors="pt")
    with torch.no_grad():
        ref = enc.model.get_image_features(**inputs)
    ref = getattr(ref, "pooler_output", ref)
    torch.testing.assert_close(ours, _unit(ref), rtol=1e-5, atol=1e-5)

    texts = ["a photo of a dog", "a dog"]
    tok = enc.processor(text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref_t = enc.model.get_text_features(**tok)
    ref_t = _unit(getattr(ref_t, "pooler_output", ref_t))
    torch.testing.assert_close(enc.embed_texts(texts), ref_t, rtol=1e-5, atol=1e-5)
    ens = enc.class_embeddings(["dog"], ["a photo of a {}", "a {}"])
    torch.testing.assert_close(ens[0], _unit(ref_t.mean(0)), rtol=1e-5, atol=1e-5)


def test_prompt_templates_are_checked() -> None:
    assert check_templates("a photo of a {}") == ["a photo of a {}"]
    for bad in (["a photo"], ["{} and {}"], ["a {name}"], []):
        with pytest.raises(ValueError, match="prompt"):
            check_templates(bad)


# -- zero-shot -------------------------------------------------------------------------------
def test_zero_shot_equals_clip_and_writes_the_evaluation(
    shapes_dir: Path, tiny_clip: Path, tmp_path: Path
) -> None:
    run = classify.zero_shot(shapes_dir, clip=str(tiny_clip), out=tmp_path, progress=False)
    ev = run.dir / "eval"
    metrics = json.loads((ev / "metrics.json").read_text())
    assert (ev / "report.html").is_file() and (run.dir / "report.html").is_file()
    assert metrics["n"] == 6 * 4 == _n_images(run)
    assert (run.dir / "best.safetensors").is_file()

    # the probabilities are CLIP's own: softmax over logits_per_image of CLIPModel.forward
    from transformers import CLIPModel, CLIPProcessor

    with open(ev / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:8]
    classes = json.loads((run.dir / "model.json").read_text())["class_names"]
    model, proc = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    images = [Image.open(r["path"]).convert("RGB") for r in rows]
    prompts = [f"a photo of a {c}" for c in classes]
    inputs = proc(text=prompts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model(**inputs).logits_per_image.softmax(-1).numpy()
    ours = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_zero_shot_cli_then_sort(shapes_dir: Path, tiny_clip: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "classify",
            "zero-shot",
            str(shapes_dir),
            "--clip",
            str(tiny_clip),
            "--prompts",
            "a photo of a {}",
            "--prompts",
            "a drawing of a {} shape",
            "--out",
            str(tmp_path / "runs"),
            "--name",
            "zs",
        ],
    )
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "runs" / "classify" / "zs"
    assert json.loads((run_dir / "model.json").read_text())["zero_shot"]["prompts"] == [
        "a photo of a {}",
        "a drawing of a {} shape",
    ]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for p in sorted((shapes_dir / "square").iterdir())[:4]:
        (inbox / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "sorted"
    res = runner.invoke(
        app,
        ["classify", "sort", str(inbox), "--model", str(run_dir), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    sorted_files = [p for p in out.rglob("*.png")]
    assert len(sorted_files) == 4 and len(list(inbox.iterdir())) == 4  # copied, not moved

    # serve feeds the run its CLIP embedding; export and profile refuse it in one line
    from PIL import Image

    from pixtell.classify import Classifier
    from pixtell.export import ExportError, export_onnx
    from pixtell.profile import profile_models
    from pixtell.serve.adapters import ClassifyAdapter

    image = sorted((shapes_dir / "square").iterdir())[0]
    served = ClassifyAdapter(run_dir, "zs").predict(Image.open(image).convert("RGB"))
    direct = Classifier.from_run(run_dir).predict([image], topk=1)[0]
    assert served["topk"][0]["label"] == direct.label
    assert served["topk"][0]["probability"] == pytest.approx(direct.probability, abs=1e-5)
    with pytest.raises(ExportError, match="CLIP"):
        export_onnx(run_dir)
    (row,) = profile_models([run_dir], memory=False)
    assert row.error is not None and "CLIP" in row.error


# -- unavailable checkpoints -----------------------------------------------------------------
def _one_sentence(text: str) -> bool:
    return "\n" not in text and text.endswith(".") and ". " not in text


@pytest.mark.parametrize("where", ["missing_dir", "offline_hub"])
def test_unavailable_clip_fails_in_one_sentence_before_any_run(
    where: str, shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if where == "missing_dir":
        name = str(tmp_path / "no-such-clip")
    else:
        import huggingface_hub.constants

        # offline for real (no request leaves): the name is only on the Hub
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        name = "openai/clip-vit-base-patch32"
    out = tmp_path / "runs"
    for call in (
        lambda: classify.train(shapes_dir, model="hybrid", clip=name, epochs=1, out=out, **FAST),
        lambda: classify.zero_shot(shapes_dir, clip=name, out=out, progress=False),
    ):
        with pytest.raises(WeightsUnavailableError) as info:
            call()
        text = str(info.value)
        assert _one_sentence(text) and "--clip DIR" in text and "offline" in text
        assert not (out / "classify").exists() or not any((out / "classify").iterdir())
    res = CliRunner().invoke(app, ["classify", "zero-shot", str(shapes_dir), "--clip", name])
    assert res.exit_code == 2 and "--clip DIR" in res.output
