"""ONNX export: checked files with metadata, onnxruntime equal to PyTorch, the onnx backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from pixtell.caption.decoding import beam_search, greedy  # noqa: E402
from pixtell.caption.vocab import Vocabulary  # noqa: E402
from pixtell.classify.predictor import Classifier  # noqa: E402
from pixtell.data.demo import make_classification_folder  # noqa: E402
from pixtell.export import (  # noqa: E402
    CAPTION_FILES,
    ExportError,
    OnnxCaptionNet,
    OnnxClassifier,
    export_onnx,
    load_captioner,
    load_classifier,
    load_detector,
    read_metadata,
)
from pixtell.models import create, load_model, save_model  # noqa: E402

CLASSES = ["circle", "square", "triangle"]


def _classify_run(root: Path, name: str, img_size: int = 32) -> Path:
    """A run directory as training leaves it (untrained weights: export does not care)."""
    run = root / name
    run.mkdir()
    torch.manual_seed(0)
    save_model(
        create("tinyvgg_a", num_classes=len(CLASSES)),
        run,
        {
            "task": "classify",
            "arch": "tinyvgg_a",
            "num_classes": len(CLASSES),
            "class_names": CLASSES,
            "img_size": img_size,
            "mean": [0.5, 0.4, 0.3],
            "std": [0.2, 0.25, 0.3],
            "max_pixels": None,
        },
    )
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run exported with a dynamic batch."""
    run = _classify_run(tmp_path_factory.mktemp("export"), "dyn")
    export_onnx(run, dynamic_batch=True)
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real (generated) PNGs of another size than the model's, and one corrupt file."""
    root = tmp_path_factory.mktemp("imgs")
    folder = make_classification_folder(
        root / "shapes", n_per_class=2, img_size=48, seed=3, progress=False
    )
    paths = sorted(Path(folder).rglob("*.png"))
    bad = root / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return [*paths, bad]


def test_file_is_valid_onnx_with_classes_and_preprocessing(exported: Path) -> None:
    path = exported / "model.onnx"
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    meta = read_metadata(path)
    assert meta["task"] == "classify"
    assert meta["class_names"] == CLASSES
    assert meta["img_size"] == 32
    assert meta["mean"] == [0.5, 0.4, 0.3] and meta["std"] == [0.2, 0.25, 0.3]
    raw = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert all(isinstance(v, str) for v in raw.values())  # plain ONNX readers see strings
    assert not list(exported.glob(".*tmp*"))  # no temporary file left behind


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_equals_torch_on_random_inputs(exported: Path, batch: int) -> None:
    model, _ = load_model(exported)
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)) * 2
    (got,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (batch, len(CLASSES))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_onnx_backend_equals_torch_on_real_images(exported: Path, images: list[Path]) -> None:
    torch_preds = Classifier.from_run(exported, device="cpu").predict(images, topk=3)
    onnx_clf = load_classifier(exported, backend="onnx")
    assert isinstance(onnx_clf, OnnxClassifier)
    onnx_preds = onnx_clf.predict(images, topk=3, batch_size=3)
    assert len(onnx_preds) == len(images)
    for a, b in zip(torch_preds, onnx_preds, strict=True):
        assert a.path == b.path and (a.error is None) == (b.error is None)
        assert [c for c, _ in a.topk] == [c for c, _ in b.topk]
        np.testing.assert_allclose([p for _, p in a.topk], [p for _, p in b.topk], atol=1e-4)
    assert onnx_preds[-1].error and "broken.png" in str(onnx_preds[-1].path)


def test_flip_tta_same_on_both_backends(exported: Path, images: list[Path]) -> None:
    good = images[:-1]
    a = dict(load_classifier(exported).iter_probs(good, tta="flip"))
    b = dict(load_classifier(exported, backend="onnx", threads=1).iter_probs(good, tta="flip"))
    for i in range(len(good)):
        np.testing.assert_allclose(a[i].numpy(), b[i].numpy(), atol=1e-5)


def test_fixed_batch_export_runs_image_by_image(tmp_path: Path, images: list[Path]) -> None:
    run = _classify_run(tmp_path, "fixed")
    result = export_onnx(run, check_inputs=[torch.rand(2, 3, 32, 32)])
    assert result.max_abs_diff <= 1e-4
    shape = onnx.load(str(run / "model.onnx")).graph.input[0].type.tensor_type.shape
    assert [d.dim_value for d in shape.dim] == [1, 3, 32, 32]
    # an .onnx file alone is enough: its metadata names the classes and the preprocessing
    clf = load_classifier(run / "model.onnx", backend="onnx")
    want = Classifier.from_run(run, device="cpu").predict(images[:3], topk=1)
    got = clf.predict(images[:3], topk=1, batch_size=4)
    assert [p.label for p in got] == [p.label for p in want]
    with pytest.raises(ValueError, match="dense"):
        clf.predict(images[:1], tta="dense")


def test_falls_back_to_torchscript_where_torch_export_fails(tmp_path: Path) -> None:
    from torch import nn

    from pixtell.export import export_module

    class Branchy(nn.Module):  # a data-dependent branch: torch.export refuses to trace it
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if images.mean() > -100:
                return images * 2
            return images

    x = torch.rand(1, 3, 4, 4)
    path = export_module(Branchy(), (x,), tmp_path / "b.onnx", input_names=["images"],
                         output_names=["out"])  # fmt: skip
    (got,) = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})
    np.testing.assert_allclose(got, x.numpy() * 2, atol=1e-6)
    with pytest.raises(ExportError, match="Branchy"):
        export_module(Branchy(), (x,), tmp_path / "c.onnx", input_names=["images"],
                      output_names=["out"], dynamo=True)  # fmt: skip
    assert not list(tmp_path.glob("*c.onnx*"))


def test_never_overwrites_without_force(exported: Path) -> None:
    path = exported / "model.onnx"
    before = path.read_bytes()
    with pytest.raises(ExportError, match="--force"):
        export_onnx(exported)
    assert path.read_bytes() == before


def test_missing_onnx_file_names_the_export_command(tmp_path: Path) -> None:
    run = _classify_run(tmp_path, "plain")
    with pytest.raises(FileNotFoundError, match="pixtell export"):
        load_classifier(run, backend="onnx")
    with pytest.raises(ValueError, match="backend"):
        load_classifier(run, backend="tensorrt")  # type: ignore[arg-type]


def test_cli_export(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pixtell.cli import app

    runner = CliRunner()
    run = _classify_run(tmp_path, "cli")
    res = runner.invoke(app, ["export", str(run), "--format", "onnx", "--opset", "17"])
    assert res.exit_code == 0, res.output
    assert "model.onnx" in res.output
    assert onnx.load(str(run / "model.onnx")).opset_import[0].version == 17
    again = runner.invoke(app, ["export", str(run)])
    assert again.exit_code == 2 and "--force" in again.output
    other = runner.invoke(app, ["export", str(run), "--format", "tflite"])
    assert other.exit_code == 2 and "onnx" in other.output


# -- captioners ------------------------------------------------------------------------------
WORDS = ["a", "red", "blue", "circle", "square", "on", "the", "left", "right"]


def _caption_run(root: Path, arch: str) -> Path:
    run = root / arch
    run.mkdir()
    (run / "config.yaml").write_text("task: caption\n")
    vocab = Vocabulary(WORDS)
    vocab.save(run)
    kw: dict = {"embed_dim": 32, "hidden_dim": 48}
    if arch == "show_attend_tell":
        kw["attention_dim"] = 16
    torch.manual_seed(0)
    net = create(arch, "caption", num_classes=len(vocab), **kw)
    meta = {
        "task": "caption",
        "arch": arch,
        "num_classes": len(vocab),
        "arch_kwargs": kw,
        "vocab": "vocab.json",
        "img_size": 64,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "max_len": 10,
    }
    save_model(net, run, meta)
    return run


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = _caption_run(tmp_path_factory.mktemp("cap"), "show_attend_tell")
    export_onnx(run, check_inputs=[torch.rand(3, 3, 64, 64)])
    return run


def test_caption_graphs_carry_vocab_and_preprocessing(caption_run: Path) -> None:
    for name in CAPTION_FILES:
        proto = onnx.load(str(caption_run / name))
        onnx.checker.check_model(proto, full_check=True)
        meta = read_metadata(caption_run / name)
        assert meta["vocab"][: len(WORDS) + 4][4:] == WORDS  # after the 4 special tokens
        assert meta["img_size"] == 64 and meta["mean"] == [0.5, 0.5, 0.5]
        assert meta["has_attention"] is True


def test_caption_greedy_and_beam_equal_on_both_backends(caption_run: Path) -> None:
    model, _ = load_model(caption_run)
    net = OnnxCaptionNet(caption_run)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        feats = model.encode(x)
        got_feats = net.encode(x)
        np.testing.assert_allclose(got_feats.numpy(), feats.numpy(), atol=1e-4)
        want = greedy(model, feats, 10, return_alphas=True)
        got = greedy(net, got_feats, 10, return_alphas=True)
        for a, b in zip(want, got, strict=True):
            assert a.tokens == b.tokens
            assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
            np.testing.assert_allclose(np.asarray(a.alphas), np.asarray(b.alphas), atol=1e-4)
        want_b = beam_search(model, feats, beam_size=3, max_len=10, n_best=2)
        got_b = beam_search(net, got_feats, beam_size=3, max_len=10, n_best=2)
    assert [[h.tokens for h in hs] for hs in want_b] == [[h.tokens for h in hs] for hs in got_b]


def test_onnx_captioner_on_real_images(caption_run: Path, images: list[Path]) -> None:
    some = [*images[:3], images[-1]]  # three pictures and the corrupt file
    want = dict(load_captioner(caption_run).iter_decoded(some, beam_size=2))
    got = dict(load_captioner(caption_run, backend="onnx").iter_decoded(some, beam_size=2))
    assert isinstance(got[3], str) and isinstance(want[3], str)
    for i in range(3):
        assert got[i].hypothesis.tokens == want[i].hypothesis.tokens
        assert got[i].grid == want[i].grid


# -- detectors -------------------------------------------------------------------------------
def _detect_run(root: Path, arch: str, size: int, **kw: object) -> Path:
    run = root / arch
    run.mkdir()
    torch.manual_seed(0)
    save_model(
        create(arch, "detect", num_classes=2, **kw),
        run,
        {
            "task": "detect",
            "arch": arch,
            "num_classes": 2,
            "class_names": ["cat", "dog"],
            "arch_kwargs": kw,
            "img_size": size,
        },
    )
    return run


def test_detector_any_image_size_equal_to_torch(tmp_path: Path, images: list[Path]) -> None:
    # an untrained detector scores below the default threshold (0.05) everywhere
    run = _detect_run(tmp_path, "tiny_fcos", 64, img_size=64, score_thresh=1e-3)
    export_onnx(run, check_inputs=[torch.rand(3, 40, 90)])
    meta = read_metadata(run / "model.onnx")
    assert meta["task"] == "detect" and meta["class_names"] == ["cat", "dog"]
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])  # normalised inside the graph
    torch_det, onnx_det = load_detector(run), load_detector(run, backend="onnx")
    want = dict(torch_det.iter_raw(images[:2] + images[-1:], batch_size=1))
    got = dict(onnx_det.iter_raw(images[:2] + images[-1:], batch_size=4))
    assert isinstance(got[2], str) and isinstance(want[2], str)  # the corrupt file
    for i in range(2):
        assert len(got[i]["scores"]) == len(want[i]["scores"]) > 0
        order_g, order_w = np.argsort(-got[i]["scores"]), np.argsort(-want[i]["scores"])
        np.testing.assert_allclose(got[i]["scores"][order_g], want[i]["scores"][order_w], atol=1e-4)
        top = order_w[0], order_g[0]  # the best box is far above the others' scores
        np.testing.assert_allclose(got[i]["boxes"][top[1]], want[i]["boxes"][top[0]], atol=1e-3)


@pytest.mark.slow
def test_detector_onnx_cannot_reproduce_is_one_clear_line(tmp_path: Path) -> None:
    run = _detect_run(tmp_path, "ssdlite320_mobilenet_v3_large", 320)
    try:
        export_onnx(run)
    except ExportError as exc:
        assert "\n" not in str(exc) and "--backend torch" in str(exc)
        assert not (run / "model.onnx").exists()


def test_classify_predict_and_sort_with_the_onnx_backend(
    exported: Path, images: list[Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from pixtell import classify
    from pixtell.cli import app

    good = images[:-1]
    torch_preds = classify.predict(exported, good, topk=2)
    onnx_preds = classify.predict(exported, good, topk=2, backend="onnx")
    for a, b in zip(torch_preds, onnx_preds, strict=True):
        assert a.label == b.label and a.probability == pytest.approx(b.probability, abs=1e-4)
    res = CliRunner().invoke(
        app,
        ["classify", "sort", str(good[0].parent), "--model", str(exported), "--out",
         str(tmp_path / "sorted"), "--backend", "onnx", "--threshold", "0"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "sorted").rglob("*.png"))) == len(
        list(good[0].parent.glob("*.png"))
    )


def test_caption_and_detect_predict_with_the_onnx_backend(
    caption_run: Path, images: list[Path], tmp_path: Path
) -> None:
    import shutil

    from pixtell import caption, detect

    cap = tmp_path / "cap"
    shutil.copytree(caption_run, cap)
    export_onnx(cap, force=True)
    good = images[:3]
    want = [p.caption for p in caption.predict(cap, good, beam_size=3)]
    assert [p.caption for p in caption.predict(cap, good, beam_size=3, backend="onnx")] == want
    det = tmp_path / "det"
    det.mkdir()
    net = create("tiny_fcos", "detect", num_classes=2, img_size=64).eval()
    meta = {"task": "detect", "arch": "tiny_fcos", "num_classes": 2, "img_size": 64}
    save_model(net, det, {**meta, "class_names": ["a", "b"], "arch_kwargs": {"img_size": 64}})
    (det / "config.yaml").write_text("task: detect\n")
    export_onnx(det)
    a = detect.predict(det, good, conf=0.0, draw=False)
    b = detect.predict(det, good, conf=0.0, draw=False, backend="onnx")
    for x, y in zip(a, b, strict=True):
        assert len(x.scores) == len(y.scores)
        np.testing.assert_allclose(np.sort(x.scores), np.sort(y.scores), atol=1e-4)
