"""ONNX export: checked files with metadata, onnxruntime equal to PyTorch, the onnx backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from pixtell.classify.predictor import Classifier  # noqa: E402
from pixtell.data.demo import make_classification_folder  # noqa: E402
from pixtell.export import (  # noqa: E402
    ExportError,
    OnnxClassifier,
    export_onnx,
    load_classifier,
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
