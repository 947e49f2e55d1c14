"""ONNX export of a run's model, and onnxruntime inference with the same interface as torch.

``export_onnx(run)`` writes ``RUN/model.onnx`` (classifiers and detectors) or three graphs
for captioners (``caption_encoder.onnx``: images → features, ``caption_init.onnx``:
features → decoder memory + LSTM state, ``caption_step.onnx``: one word); the beam search
stays in Python and drives the step graph. Every file carries what inference needs in its
``metadata_props`` (task, architecture, class names or vocabulary, img_size, mean, std), is
checked with ``onnx.checker`` and compared with PyTorch before it is kept.

``load_classifier(run, backend="onnx")`` returns a :class:`~pixtell.classify.predictor`-style
object (``iter_probs`` / ``predict``) that runs the graph with onnxruntime.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pixtell.classify.predictor import Classifier
from pixtell.models import get_spec, load_model
from pixtell.models.io import META_FILE
from pixtell.runs import Run, run_dir_holding

ONNX_FILE = "model.onnx"
CAPTION_FILES = ("caption_encoder.onnx", "caption_init.onnx", "caption_step.onnx")
DEFAULT_OPSET = 18
TOLERANCE = 1e-4
Backend = Literal["torch", "onnx"]


class ExportError(ValueError):
    """A model that cannot be exported, or an export that does not match PyTorch."""


@dataclass
class ExportResult:
    """The files written and the largest |onnxruntime - torch| difference measured."""

    files: list[Path]
    max_abs_diff: float
    metadata: dict[str, str] = field(default_factory=dict)


# -- low level: one module → one checked .onnx file ------------------------------------------
def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs the onnx and onnxruntime packages ({exc.name} is missing); "
            "install them with `pip install pixtell[export]`"
        ) from None


def _metadata_strings(meta: dict[str, Any]) -> dict[str, str]:
    """metadata_props values must be strings: lists and dicts are stored as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items() if v is not None}


def export_module(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, Any] | None = None,
    dynamo: bool | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> Path:
    """Export ``module(*inputs)`` to ``path``, add ``metadata`` and run ``onnx.checker``.

    ``dynamo=True`` uses torch's ``torch.export``-based exporter (its default since 2.9),
    ``False`` the TorchScript one, which torchvision's detectors still need. By default the
    first is tried for opset 18 and later (older opsets it cannot convert to), and the
    second when it fails or for older opsets. With ``dynamic_batch`` the first axis of every
    input and output is symbolic. The file is written next to ``path`` first and renamed,
    so a failed export leaves nothing behind.
    """
    import onnx

    module = module.eval()
    tmp = path.with_name(f".{path.name}.tmp")
    tries = [dynamo] if dynamo is not None else ([True, False] if opset >= 18 else [False])
    for i, new_exporter in enumerate(tries):
        try:
            _torch_export(
                module,
                inputs,
                tmp,
                new_exporter,
                input_names,
                output_names,
                opset,
                dynamic_batch,
                dynamic_axes,
            )
            break
        except ExportError:
            if i == len(tries) - 1:
                raise
    try:
        # load the external weights (if the exporter split them) so one file holds everything
        proto = onnx.load(str(tmp), load_external_data=True)
        for k, v in _metadata_strings(metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        got = {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}
        if got != {opset}:
            raise ExportError(f"torch.onnx wrote opset {sorted(got)}, not the {opset} asked for")
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".data").unlink(missing_ok=True)
    return path


def _torch_export(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    tmp: Path,
    dynamo: bool,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
    dynamic_batch: bool,
    dynamic_axes: dict[str, dict[int, str]] | None,
) -> None:
    """One ``torch.onnx.export`` call, quiet, its failure as a one-line ``ExportError``."""
    kwargs: dict[str, Any] = dict(
        input_names=list(input_names), output_names=list(output_names), opset_version=opset
    )
    if dynamic_batch and dynamo:
        batch = torch.export.Dim("batch", min=1, max=4096)
        kwargs["dynamic_shapes"] = _batch_shapes(module, len(inputs), {0: batch})
    elif dynamic_batch:
        kwargs["dynamic_axes"] = {n: {0: "batch"} for n in [*input_names, *output_names]}
    if dynamic_axes and not dynamo:  # other symbolic axes than the batch
        kwargs["dynamic_axes"] = kwargs.get("dynamic_axes", {}) | dynamic_axes
    # the exporters print progress and deprecation notes that mean nothing to a user
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, inputs, str(tmp), dynamo=dynamo, **kwargs)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(
                f"torch.onnx could not export {type(module).__name__}: {first}"
            ) from exc


def _batch_shapes(module: nn.Module, n: int, axis: dict) -> dict[str, Any]:
    """torch.export's ``dynamic_shapes`` for ``n`` positional inputs, keyed by parameter name
    (a ``*args`` parameter takes a tuple of the inputs left)."""
    shapes: dict[str, Any] = {}
    for p in inspect.signature(module.forward).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            shapes[p.name] = tuple(axis for _ in range(n - len(shapes)))
            break
        if len(shapes) < n:
            shapes[p.name] = axis
    return shapes


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session; ``threads`` sets the intra-op thread count."""
    _require_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file, JSON values decoded."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for p in proto.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out


def _compare(session: Any, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """Largest absolute difference between onnxruntime and torch on ``inputs``."""
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    got = session.run(None, feed)
    with torch.no_grad():
        want = module(*inputs)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    diff = 0.0
    for g, w in zip(got, want, strict=True):
        w = w.float().numpy()
        if g.shape != w.shape:
            raise ExportError(f"onnxruntime returned shape {g.shape}, torch {w.shape}")
        if g.size:
            diff = max(diff, float(np.abs(g.astype(np.float32) - w).max()))
    return diff


def _check_equal(
    path: Path, module: nn.Module, inputs: Sequence[tuple[torch.Tensor, ...]]
) -> float:
    session = ort_session(path)
    diff = max(_compare(session, module, x) for x in inputs)
    if not diff <= TOLERANCE:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"the exported {path.name} differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}); "
            "the file was not kept"
        )
    return diff


# -- run export -------------------------------------------------------------------------------
class _Images(nn.Module):
    """Names the graph's input: float images (B, 3, H, W), normalised as ``model.json`` says."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    taken = [p for p in paths if p.exists()]
    if taken and not force:
        raise ExportError(f"{taken[0]} already exists; pass --force to replace it")


def _preprocessing(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": meta["task"],
        "arch": meta["arch"],
        "img_size": int(meta["img_size"]),
        "mean": list(meta["mean"]),
        "std": list(meta["std"]),
        "max_pixels": meta.get("max_pixels"),
        "producer": "pixtell",
    }


def _random_images(meta: dict[str, Any], batch: int, seed: int = 0) -> torch.Tensor:
    s = int(meta["img_size"])
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(seed))


def export_onnx(
    run: str | Path | Run,
    *,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    check_inputs: Sequence[torch.Tensor] = (),
) -> ExportResult:
    """Export the model of ``run`` to ONNX next to its ``model.json``.

    The graph's input is the preprocessed image batch (``img_size``, ``mean``, ``std`` are in
    the metadata). Before a file is kept, onnxruntime must match PyTorch within 1e-4 on a
    random batch and on ``check_inputs`` (preprocessed image batches). An existing file is
    replaced only with ``force``.
    """
    _require_onnx()
    run_dir = run_dir_holding(run.dir if isinstance(run, Run) else run, META_FILE)
    model, meta = load_model(run_dir)
    task = meta.get("task")
    if get_spec(meta["arch"], task).needs_clip:
        raise ExportError(
            f"{run_dir}: {meta['arch']} also reads CLIP image embeddings; exporting it to ONNX "
            "is not supported yet"
        )
    if task == "classify":
        return _export_classifier(model, meta, run_dir, dynamic_batch, opset, force, check_inputs)
    if task == "caption":
        return _export_captioner(model, meta, run_dir, opset, force, check_inputs)
    if task == "detect":
        return _export_detector(model, meta, run_dir, opset, force, check_inputs)
    raise ExportError(f"{run_dir}: cannot export a {task!r} model to ONNX")


def _export_classifier(
    model: nn.Module,
    meta: dict[str, Any],
    run_dir: Path,
    dynamic_batch: bool,
    opset: int,
    force: bool,
    check_inputs: Sequence[torch.Tensor],
) -> ExportResult:
    path = run_dir / ONNX_FILE
    _refuse_existing([path], force)
    net = _Images(model).eval()
    # torch.export treats a size-1 axis as a constant, so a dynamic batch is traced with 2
    example = _random_images(meta, 2 if dynamic_batch else 1)
    md = _preprocessing(meta) | {
        "class_names": list(meta["class_names"]),
        "dynamic_batch": dynamic_batch,
        "inputs": "images",
        "outputs": "logits",
    }
    export_module(
        net,
        (example,),
        path,
        input_names=["images"],
        output_names=["logits"],
        dynamic_batch=dynamic_batch,
        opset=opset,
        metadata=md,
    )
    checks = [(example,), (_random_images(meta, example.shape[0], seed=1) * 3,)]
    for x in check_inputs:
        batches = x.split(1) if not dynamic_batch else [x]
        checks += [(b,) for b in batches]
    diff = _check_equal(path, net, checks)
    return ExportResult([path], diff, _metadata_strings(md))


# -- captioners: encoder, decoder init and one decoder step ----------------------------------
class _CaptionInit(nn.Module):
    """features → the decoder memory tensors, then the LSTM state (h, c)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory = self.net.prepare(feats)
        return (*memory, *self.net.init_state(memory))


class _CaptionStep(nn.Module):
    """(tokens, h, c, memory...) → (log-probabilities, h, c[, attention])."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, tokens: torch.Tensor, h: torch.Tensor, c: torch.Tensor, *memory: torch.Tensor
    ):  # noqa: ANN201
        logprobs, (h, c), alpha = self.net.step(tokens, (h, c), memory)
        return (logprobs, h, c) if alpha is None else (logprobs, h, c, alpha)


def _export_captioner(
    model: nn.Module,
    meta: dict[str, Any],
    run_dir: Path,
    opset: int,
    force: bool,
    check_inputs: Sequence[torch.Tensor],
) -> ExportResult:
    """Three graphs with a dynamic batch (a beam search runs batch x beam rows)."""
    paths = [run_dir / n for n in CAPTION_FILES]
    _refuse_existing(paths, force)
    vocab_file = run_dir / meta.get("vocab", "vocab.json")
    try:
        words = json.loads(vocab_file.read_text(encoding="utf-8"))["words"]
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"cannot read the vocabulary {vocab_file} ({exc})") from None
    model = model.eval()
    md = _preprocessing(meta) | {
        "vocab": words,
        "max_len": meta.get("max_len"),
        "has_attention": meta["arch"] != "show_tell",
        "graphs": list(CAPTION_FILES),
    }
    encoder, init, step = _Images(_Encode(model)), _CaptionInit(model), _CaptionStep(model)
    images = _random_images(meta, 2)
    with torch.no_grad():
        feats = model.encode(images)
        *memory, h, c = init(feats)
        step_in = (torch.tensor([1, 1]), h, c, *memory)  # <start> for both rows
        n_out = len(step(*step_in))
    mem_names = [f"memory{i}" for i in range(len(memory))]
    graphs = [
        (encoder, (images,), ["images"], ["features"]),
        (init, (feats,), ["features"], [*mem_names, "h", "c"]),
        (step, step_in, ["tokens", "h", "c", *mem_names], ["logprobs", "h", "c", "alpha"][:n_out]),
    ]
    written: list[Path] = []
    try:
        for path, (module, inputs, ins, outs) in zip(paths, graphs, strict=True):
            # ONNX names are unique per graph: the step's new state is h_next / c_next
            outs = [f"{o}_next" if o in ins else o for o in outs]
            export_module(
                module,
                inputs,
                path,
                input_names=ins,
                output_names=outs,
                dynamic_batch=True,
                opset=opset,
                metadata=md | {"graph": path.stem, "inputs": ins, "outputs": outs},
            )
            written.append(path)
        with torch.no_grad():
            real = [(x, model.encode(x)) for x in check_inputs]
        diff = max(
            _check_equal(paths[0], encoder, [(images,), *[(x,) for x, _ in real]]),
            _check_equal(paths[1], init, [(feats,), *[(f,) for _, f in real]]),
            _check_equal(paths[2], step, [step_in]),
        )
    except Exception:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return ExportResult(paths, diff, _metadata_strings(md))


class _Encode(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.encode(images)


class OnnxCaptionNet(nn.Module):
    """The caption model interface (``encode``, ``prepare``, ``init_state``, ``step``) on
    onnxruntime, so the Python greedy and beam searches drive the exported graphs unchanged.

    ``prepare`` returns the memory tensors followed by the initial (h, c): all are batch-first,
    so a beam search's ``repeat_interleave`` expands the state along with the memory.
    """

    def __init__(self, run: str | Path | Run, threads: int | None = None) -> None:
        super().__init__()
        self.paths = [find_onnx(run, n) for n in CAPTION_FILES]
        self.meta = read_metadata(self.paths[0])
        self.encoder, self.init, self.stepper = (ort_session(p, threads) for p in self.paths)
        self.vocab: list[str] = self.meta["vocab"]

    @staticmethod
    def _run(session: Any, *tensors: torch.Tensor) -> list[torch.Tensor]:
        feed = {i.name: t.cpu().numpy() for i, t in zip(session.get_inputs(), tensors, strict=True)}
        return [torch.from_numpy(o) for o in session.run(None, feed)]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(self.encoder, images.float())[0]

    def prepare(self, feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self._run(self.init, feats.float()))

    def init_state(self, memory: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        return memory[-2], memory[-1]

    def step(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], memory: tuple
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        out = self._run(self.stepper, tokens.long(), *state, *memory[:-2])
        return out[0], (out[1], out[2]), (out[3] if len(out) > 3 else None)


def load_captioner(
    run: str | Path | Run,
    backend: Backend = "torch",
    *,
    device: str | None = None,
    max_pixels: int | None = None,
    threads: int | None = None,
) -> Any:
    """The run's ``Captioner`` (beam search, attention maps), on PyTorch or onnxruntime."""
    from pixtell.caption.predict import Captioner
    from pixtell.caption.vocab import Vocabulary

    if backend == "torch":
        return Captioner.from_run(run, device=device, max_pixels=max_pixels)
    if backend != "onnx":
        raise ValueError(f"unknown --backend {backend!r}: use torch or onnx")
    _require_onnx()
    net = OnnxCaptionNet(run, threads)
    meta = net.meta | {"num_classes": len(net.vocab)}
    return Captioner(net, Vocabulary(net.vocab), meta, "cpu", max_pixels)


# -- detectors -------------------------------------------------------------------------------
DETECT_OUTPUTS = ("boxes", "labels", "scores")
BOX_TOLERANCE = 1e-3  # pixels: box coordinates are hundreds of pixels, float32 rounds ~1e-5


class DetectorGraph(nn.Module):
    """One 0-1 RGB image (3, H, W) of any size → boxes (xyxy pixels), labels, scores.

    torchvision's detectors resize and normalise inside the graph; labels stay 1-based
    (0 is torchvision's background) as the PyTorch model returns them.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net([image])[0]
        return out["boxes"], out["labels"], out["scores"]


def _unambiguous(scores: np.ndarray, gap: float = 1e-5) -> np.ndarray:
    """Mask of the detections (sorted by score) whose rank float rounding cannot change: no
    other score within ``gap``, and clear of the lowest kept score (the top-k cut)."""
    if scores.size < 2:
        return np.ones(scores.shape, bool)
    d = np.abs(np.diff(scores))
    alone = np.minimum(np.r_[np.inf, d], np.r_[d, np.inf]) > gap
    return alone & (scores - scores.min() > gap)


def _compare_detections(session: Any, module: nn.Module, image: torch.Tensor, arch: str) -> float:
    """Largest score difference; boxes and labels compared where the order is well defined
    (an untrained detector's near-equal scores may rank differently in the last bit)."""
    got = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in module(image)]
    if got[0].shape != want[0].shape:
        raise ExportError(
            f"onnxruntime finds {len(got[0])} objects where PyTorch finds {len(want[0])}: "
            f"torchvision's ONNX export does not reproduce {arch}; use --backend torch with it"
        )
    if not got[0].size:
        return 0.0
    go, wo = np.argsort(-got[2], kind="stable"), np.argsort(-want[2], kind="stable")
    score = float(np.abs(got[2][go] - want[2][wo]).max())
    keep = _unambiguous(want[2][wo])
    box = float(np.abs(got[0][go][keep] - want[0][wo][keep]).max()) if keep.any() else 0.0
    labels_ok = np.array_equal(got[1][go][keep], want[1][wo][keep])
    if box > BOX_TOLERANCE or score > TOLERANCE or not labels_ok:
        raise ExportError(
            f"the exported {arch} differs from PyTorch (boxes by {box:.1e} px, scores by "
            f"{score:.1e}); use --backend torch with it"
        )
    return score


def _export_detector(
    model: nn.Module,
    meta: dict[str, Any],
    run_dir: Path,
    opset: int,
    force: bool,
    check_inputs: Sequence[torch.Tensor],
) -> ExportResult:
    """``model.onnx`` taking one image of any size; traced with the TorchScript exporter,
    the one torchvision's detection models are written (and tested) for."""
    path = run_dir / ONNX_FILE
    _refuse_existing([path], force)
    net = DetectorGraph(model).eval()
    transform = getattr(model, "transform", None)
    md = {
        "task": "detect",
        "arch": meta["arch"],
        "img_size": int(meta["img_size"]),
        "class_names": list(meta["class_names"]),
        "mean": list(getattr(transform, "image_mean", [])),
        "std": list(getattr(transform, "image_std", [])),
        "inputs": "image: float RGB (3, H, W) in 0-1, any size (resized and normalised inside)",
        "outputs": "boxes (N, 4) xyxy pixels, labels (N,) 1-based (0 = background), scores (N,)",
        "producer": "pixtell",
    }
    s = int(meta["img_size"])
    g = torch.Generator().manual_seed(0)
    example = torch.rand(3, s, s, generator=g)
    export_module(
        net,
        (example,),
        path,
        input_names=["image"],
        output_names=list(DETECT_OUTPUTS),
        opset=max(opset, 11),
        metadata=md,
        dynamo=False,
        dynamic_axes={"image": {1: "height", 2: "width"}},
    )
    try:
        session = ort_session(path)
        others = [torch.rand(3, s * 3 // 4, s, generator=g)] + [
            img for x in check_inputs for img in (x if x.dim() == 4 else x[None])
        ]
        diff = max(_compare_detections(session, net, x, meta["arch"]) for x in [example, *others])
    except Exception:
        path.unlink(missing_ok=True)
        raise
    return ExportResult([path], diff, _metadata_strings(md))


class OrtDetectNet(nn.Module):
    """An exported detector behind torchvision's call: a list of images → a list of dicts."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        self.path, self.session = path, ort_session(path, threads)

    def forward(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            got = self.session.run(None, {"image": image.detach().float().cpu().numpy()})
            out.append({k: torch.from_numpy(v) for k, v in zip(DETECT_OUTPUTS, got, strict=True)})
        return out


def load_detector(
    run: str | Path | Run, backend: Backend = "torch", *, threads: int | None = None
) -> Any:
    """The run's ``Detector`` (``raw`` / ``iter_raw``) on PyTorch or onnxruntime."""
    from pixtell.detect.predict import Detector

    if backend == "torch":
        return Detector.from_run(run)
    if backend != "onnx":
        raise ValueError(f"unknown --backend {backend!r}: use torch or onnx")
    path = find_onnx(run)
    meta = read_metadata(path)
    if meta.get("task") != "detect":
        raise ValueError(f"{path} holds a {meta.get('task')} model, not a detector")
    return Detector(OrtDetectNet(path, threads), meta)


# -- onnxruntime classifier -------------------------------------------------------------------
class OrtModule(nn.Module):
    """An onnxruntime session behind ``nn.Module``'s call: tensors in, a CPU tensor out.

    This lets the torch inference code (batching, TTA, softmax) run unchanged on onnxruntime.
    """

    def __init__(self, session: Any, path: Path) -> None:
        super().__init__()
        self.session, self.path = session, path
        inp = session.get_inputs()[0]
        self.input_name, self.shape = inp.name, inp.shape

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fixed = [d for d in self.shape[2:] if isinstance(d, int)]
        if fixed and list(images.shape[2:]) != fixed:
            raise ValueError(
                f"{self.path.name} takes {fixed[0]}x{fixed[-1]} images, not "
                f"{images.shape[2]}x{images.shape[3]} (--tta dense needs --backend torch)"
            )
        x = images.detach().float().cpu().numpy()
        if isinstance(self.shape[0], int):  # exported without --dynamic-batch: one at a time
            outs = [
                self.session.run(None, {self.input_name: x[i : i + 1]})[0] for i in range(len(x))
            ]
            return torch.from_numpy(np.concatenate(outs)) if outs else torch.empty(0)
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


def load_classifier(
    run: str | Path | Run,
    backend: Backend = "torch",
    *,
    device: str | None = None,
    max_pixels: int | None = None,
    threads: int | None = None,
) -> Any:
    """A classifier with ``iter_probs`` / ``predict``: PyTorch, or onnxruntime on ``model.onnx``.

    ``run`` is a run directory (or a file in it); with ``backend="onnx"`` it may also be an
    exported ``.onnx`` file, whose metadata supplies the classes and preprocessing.
    """
    if backend == "torch":
        return Classifier.from_run(run, device=device, max_pixels=max_pixels)
    if backend != "onnx":
        raise ValueError(f"unknown --backend {backend!r}: use torch or onnx")
    return OnnxClassifier.from_path(run, max_pixels=max_pixels, threads=threads)


def find_onnx(run: str | Path | Run, name: str = ONNX_FILE) -> Path:
    """The exported file of a run (or ``run`` itself when it is an .onnx file)."""
    path = Path(run.dir if isinstance(run, Run) else run)
    if path.is_file() and path.suffix == ".onnx":
        return path
    run_dir = run_dir_holding(path, META_FILE)
    if not (run_dir / name).is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {name}; export it first with "
            f"`pixtell export {run_dir} --format onnx`"
        )
    return run_dir / name


class OnnxClassifier(Classifier):
    """onnxruntime twin of ``Classifier``: the same ``iter_probs``, ``predict`` and TTA.

    The torch ``Classifier`` runs with an :class:`OrtModule` as its model, so both backends
    share one inference loop and differ only in what computes the logits.
    """

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        max_pixels: int | None = None,
        threads: int | None = None,
    ) -> None:
        if meta.get("task") != "classify":
            raise ValueError(f"{path} holds a {meta.get('task')} model, not a classifier")
        super().__init__(OrtModule(ort_session(path, threads), path), meta, "cpu", max_pixels)
        self.path = path

    @classmethod
    def from_path(
        cls, run: str | Path | Run, max_pixels: int | None = None, threads: int | None = None
    ) -> OnnxClassifier:
        """From a run directory holding ``model.onnx``, or the .onnx file itself."""
        path = find_onnx(run)
        meta = read_metadata(path)
        missing = {"task", "class_names", "img_size", "mean", "std"} - meta.keys()
        if missing:
            raise ValueError(f"{path} lacks pixtell metadata ({', '.join(sorted(missing))})")
        return cls(path, meta, max_pixels, threads)
