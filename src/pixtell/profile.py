"""Size and speed of models: parameters, GMACs, peak memory, latency and throughput.

``profile_models(["resnet18", "runs/classify/x"], batch_sizes=(1, 8), backends=("torch",
"onnx"))`` returns one :class:`ProfileRow` per model x backend x batch size; ``write_csv``
writes them with timm's benchmark columns (``model, img_size, batch_size, samples_per_sec,
step_time_ms, param_count, gmacs``; parameters in millions, GMACs per image) plus ours.

- MACs: ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-add of the
  matmuls and convolutions; GMACs = FLOPs / 2 / 1e9 per image. Fused attention kernels have
  no FLOP formula on CPU, so the count runs with the math attention path (same arithmetic).
- Peak memory: torch's profiler (``profile_memory=True``) records the bytes each operator
  allocates and frees; the peak of their running sum over one forward pass is the memory the
  activations need on top of the weights. onnxruntime allocates in its own arena, which the
  profiler cannot see, so its rows leave the column empty.
- Captioners are timed per caption: the encoder and a greedy decoding of ``max_len`` words
  (a random model rarely stops early, so this is the longest caption).
- Latency: ``warmup`` untimed runs, then ``runs`` timed ones; the median is ``step_time_ms``,
  the 90th percentile ``p90_ms``, and throughput is ``batch_size / median``.
"""

from __future__ import annotations

import csv
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pixtell.models import count_params, create, get_spec, list_models, load_model
from pixtell.report import Section, write_report

BACKENDS = ("torch", "onnx")
CSV_COLUMNS = (
    "model",
    "img_size",
    "batch_size",
    "samples_per_sec",
    "step_time_ms",
    "param_count",
    "gmacs",
)


@dataclass
class ProfileRow:
    """One model x backend x batch size; ``param_count`` in millions, ``gmacs`` per image."""

    model: str
    img_size: int
    batch_size: int
    samples_per_sec: float
    step_time_ms: float  # median latency of one batch
    param_count: float
    gmacs: float
    backend: str = "torch"
    p90_ms: float = 0.0
    peak_mem_mb: float | None = None
    threads: int = 0
    task: str = "classify"
    error: str | None = None


@dataclass
class Subject:
    """A model to profile: the module, its task, and the image size it takes."""

    name: str
    net: nn.Module
    task: str
    img_size: int
    max_len: int = 20  # captioners: words decoded per caption


def resolve(model_or_run: str | Path, img_size: int | None = None) -> Subject:
    """A registered model name (built untrained, 1000 classes) or a run directory."""
    path = Path(model_or_run)
    if path.exists():
        net, meta = load_model(path)
        _refuse_clip(meta["arch"], meta["task"])
        size = img_size or int(meta["img_size"])
        return Subject(str(model_or_run), net, meta["task"], size, int(meta.get("max_len", 20)))
    specs = [s for s in list_models() if s.name == str(model_or_run)]
    if not specs:
        known = ", ".join(sorted({s.name for s in list_models("classify")}))
        raise ValueError(
            f"{model_or_run!r} is neither a run directory nor a registered model; models: {known}"
        )
    # a name registered for several tasks (an encoder is also a classifier) profiles as one
    spec = min(specs, key=lambda s: (s.task != "classify", s.task))
    if spec.task == "caption":
        raise ValueError(f"{spec.name} is a caption model: profile a trained caption run instead")
    _refuse_clip(spec.name, spec.task)
    kw: dict[str, Any] = {"img_size": img_size} if spec.name == "tiny_fcos" and img_size else {}
    net = create(spec.name, spec.task, num_classes=1000 if spec.task == "classify" else 90, **kw)
    return Subject(spec.name, net.eval(), spec.task, img_size or spec.input_size)


def _refuse_clip(arch: str, task: str) -> None:
    if get_spec(arch, task).needs_clip:
        raise ValueError(
            f"{arch} also reads CLIP image embeddings; profiling it is not supported yet"
        )


def _inputs(subject: Subject, batch: int) -> Any:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, subject.img_size, subject.img_size, generator=g)
    if subject.task == "detect":  # torchvision detectors take a list of 0-1 images
        return list(x.sigmoid())
    return x


def _forward(subject: Subject) -> Callable[[Any], Any]:
    if subject.task == "caption":  # a whole caption: encoder, then greedy decoding
        from pixtell.caption.decoding import greedy

        net = subject.net
        return lambda images: greedy(net, net.encode(images), subject.max_len)
    return subject.net


@contextmanager
def _threads(n: int | None) -> Iterator[int]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def count_macs(fn: Callable[[Any], Any], inputs: Any) -> int:
    """Multiply-accumulates of one call ``fn(inputs)``: FlopCounterMode's FLOPs / 2."""
    # The fused attention kernels (nn.MultiheadAttention's fast path, CPU flash attention)
    # have no FLOP formula and would count as 0; the math path does the same matmuls.
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with (
            torch.no_grad(),
            sdpa_kernel(SDPBackend.MATH),
            FlopCounterMode(display=False) as counter,
        ):
            fn(inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return counter.get_total_flops() // 2


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence what the profiler's C++ side (kineto) prints on start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[Any], Any], inputs: Any) -> int:
    """Peak of the bytes allocated minus freed, operator by operator, over one call."""
    from torch.profiler import ProfilerActivity, profile

    with (
        _quiet_native_stderr(),
        torch.no_grad(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn(inputs)
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def time_calls(fn: Callable[[], Any], runs: int = 20, warmup: int = 3) -> list[float]:
    """Seconds taken by each of ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _row(
    subject: Subject,
    backend: str,
    batch: int,
    times: list[float],
    params: int,
    macs_per_image: float,
    peak: int | None,
    threads: int,
) -> ProfileRow:
    median = statistics.median(times)
    return ProfileRow(
        model=subject.name,
        img_size=subject.img_size,
        batch_size=batch,
        samples_per_sec=round(batch / median, 2),
        step_time_ms=round(median * 1e3, 3),
        param_count=round(params / 1e6, 2),
        gmacs=round(macs_per_image / 1e9, 3),
        backend=backend,
        p90_ms=round(float(np.percentile(times, 90)) * 1e3, 3),
        peak_mem_mb=None if peak is None else round(peak / 2**20, 2),
        threads=threads,
        task=subject.task,
    )


def _onnx_runner(subject: Subject, tmp: Path, threads: int | None) -> Callable[[Any], Any]:
    """Export the subject to ``tmp`` and return ``inputs → outputs`` on onnxruntime."""
    from pixtell.export import (
        DETECT_OUTPUTS,
        DetectorGraph,
        ExportError,
        export_module,
        ort_session,
    )

    if subject.task == "detect":  # one image at a time, as the exported graph takes them
        path = export_module(
            DetectorGraph(subject.net),
            (_inputs(subject, 1)[0],),
            tmp / "model.onnx",
            input_names=["image"],
            output_names=list(DETECT_OUTPUTS),
            dynamo=False,
        )
        det = ort_session(path, threads)
        return lambda images: [det.run(None, {"image": im.numpy()}) for im in images]
    if subject.task != "classify":
        raise ExportError(
            f"the onnx backend profiles classifiers and detectors, not {subject.task}"
        )
    example = _inputs(subject, 2)
    path = export_module(
        subject.net,
        (example,),
        tmp / "model.onnx",
        input_names=["images"],
        output_names=["logits"],
        dynamic_batch=True,
    )
    session = ort_session(path, threads)
    return lambda x: session.run(None, {"images": x.numpy()})


def profile_models(
    models: Sequence[str | Path],
    *,
    img_size: int | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    backends: Sequence[str] = ("torch",),
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 3,
    memory: bool = True,
    on_row: Callable[[ProfileRow], None] | None = None,
) -> list[ProfileRow]:
    """Profile each model (a registered name or a run) on each backend and batch size.

    A model or backend that fails gives a row with ``error`` set; the others still run.
    """
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backend {sorted(unknown)[0]!r}: use torch and/or onnx")
    if any(b < 1 for b in batch_sizes) or runs < 1:
        raise ValueError("batch sizes and --runs must be at least 1")
    rows: list[ProfileRow] = []

    def emit(row: ProfileRow) -> None:
        rows.append(row)
        if on_row:
            on_row(row)

    with _threads(threads) as n_threads:
        for name in models:
            try:
                subject = resolve(name, img_size)
            except (ValueError, FileNotFoundError, KeyError) as exc:
                emit(ProfileRow(str(name), img_size or 0, 0, 0, 0, 0, 0, error=str(exc)))
                continue
            fn = _forward(subject)
            params = count_params(subject.net)
            macs = count_macs(fn, _inputs(subject, 1))
            for backend in backends:
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        run_fn = (
                            fn if backend == "torch" else _onnx_runner(subject, Path(tmp), threads)
                        )
                    except Exception as exc:  # one model's export problem must not stop the table
                        emit(
                            ProfileRow(
                                subject.name,
                                subject.img_size,
                                0,
                                0,
                                0,
                                round(params / 1e6, 2),
                                round(macs / 1e9, 3),
                                backend,
                                error=str(exc),
                            )
                        )
                        continue
                    for batch in batch_sizes:
                        x = _inputs(subject, batch)
                        with torch.inference_mode():
                            times = time_calls(partial(run_fn, x), runs, warmup)
                        peak = peak_memory_bytes(fn, x) if memory and backend == "torch" else None
                        emit(_row(subject, backend, batch, times, params, macs, peak, n_threads))
    return rows


def write_csv(rows: Sequence[ProfileRow], path: str | Path) -> Path:
    """timm's benchmark columns first, then backend, p90, peak memory, threads, task, error."""
    path = Path(path)
    names = [f.name for f in fields(ProfileRow)]
    header = list(CSV_COLUMNS) + [n for n in names if n not in CSV_COLUMNS]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in asdict(r).items()})
    return path


TABLE_HEADER = (
    "model",
    "backend",
    "img",
    "batch",
    "params (M)",
    "GMACs",
    "median ms",
    "p90 ms",
    "images/s",
    "peak MB",
)


def table_rows(rows: Sequence[ProfileRow]) -> list[list[str]]:
    """The terminal / HTML table: one list of strings per row (errors in the last column)."""
    out = []
    for r in rows:
        if r.error:
            out.append([r.model, r.backend, "", "", "", "", "", "", "", f"error: {r.error}"])
            continue
        out.append(
            [
                r.model,
                r.backend,
                str(r.img_size),
                str(r.batch_size),
                f"{r.param_count:.2f}",
                f"{r.gmacs:.2f}",
                f"{r.step_time_ms:.2f}",
                f"{r.p90_ms:.2f}",
                f"{r.samples_per_sec:.1f}",
                "" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.1f}",
            ]
        )
    return out


def write_html(rows: Sequence[ProfileRow], path: str | Path) -> Path:
    """An HTML page with the table (the shared report layout)."""
    note = (
        "GMACs per image (FlopCounterMode FLOPs / 2); latency: median and 90th percentile of "
        "timed runs after warm-up; peak MB: torch profiler memory events (torch backend)."
    )
    section = Section("Profile", rows=[list(TABLE_HEADER), *table_rows(rows)], text=note)
    return write_report(Path(path), "pixtell profile", [section])
