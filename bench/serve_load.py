"""Benchmark: ``pixtell serve`` under N concurrent clients on 127.0.0.1.

Starts the real app with uvicorn in this process (a background thread), then for each client
count runs that many client threads, each posting one JPEG to ``/v1/classify`` in a loop with
its own keep-alive connection, for at most ``--seconds`` and ``--max-requests`` in all.
Prints requests/s, p50/p99 latency and the error count (anything but 200; must be 0) and the
speed-up over one client, for each ``--backends`` entry (onnx: the run's ``model.onnx``).
Without RUN it serves an untrained ``--model`` (random weights: the speed of a model does not
depend on its weights), exported to ONNX in a temporary folder.

    python bench/serve_load.py --clients 1,8 --seconds 15
    python bench/serve_load.py runs/classify/photos --clients 1,2,4,8 --backends torch
"""

from __future__ import annotations

import argparse
import io
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import uvicorn
import yaml
from PIL import Image
from rich.console import Console
from rich.table import Table

from pixtell.models import create
from pixtell.models.io import save_model
from pixtell.serve import create_app


@dataclass
class Result:
    """One client count's measurement."""

    backend: str
    clients: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def untrained_run(root: Path, model: str, img_size: int, classes: int) -> Path:
    """A classify run directory holding ``model`` with random weights."""
    run_dir = root / model
    run_dir.mkdir(parents=True)
    meta = {
        "task": "classify",
        "arch": model,
        "num_classes": classes,
        "class_names": [f"class_{i}" for i in range(classes)],
        "img_size": img_size,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    save_model(create(model, "classify", num_classes=classes, pretrained=False), run_dir, meta)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"task": "classify", "model": model}))
    return run_dir


def photo(size: int) -> bytes:
    """A JPEG of smooth noise, about the size of a phone picture scaled down."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def load(
    url: str, data: bytes, clients: int, seconds: float, max_requests: int, backend: str = ""
) -> Result:
    """``clients`` threads posting ``data`` until the time or the request budget runs out."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0
    issued = 0
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        nonlocal errors, issued
        with httpx.Client(timeout=60) as http:
            while time.perf_counter() < stop_at:
                with lock:
                    if issued >= max_requests:
                        return
                    issued += 1
                t0 = time.perf_counter()
                try:
                    ok = http.post(url, files={"file": ("p.jpg", data, "image/jpeg")}).is_success
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    errors += not ok

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3
    return Result(
        backend,
        clients,
        len(latencies),
        errors,
        elapsed,
        float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        float(np.percentile(ms, 99)) if len(ms) else float("nan"),
    )


class Server:
    """The app on a free loopback port, served by uvicorn in a daemon thread."""

    def __init__(self, run: Path, backend: str, workers: int) -> None:
        app = create_app([run], workers=workers, backend=backend, ui=False, api_key="")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1/classify"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, help="a classify run (default: untrained)")
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--photo-size", type=int, default=640, help="uploaded JPEG side")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument("--backends", default="torch,onnx", help="comma-separated: torch, onnx")
    parser.add_argument("--workers", type=int, default=4, help="server inference threads")
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--max-requests", type=int, default=2000, help="per measurement")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    with tempfile.TemporaryDirectory(prefix="pixtell-bench-") as tmp:
        run = args.run
        if run is None:
            run = untrained_run(Path(tmp), args.model, args.img_size, 10)
            if "onnx" in backends:
                from pixtell.export import export_onnx

                export_onnx(run, dynamic_batch=True)
        data = photo(args.photo_size)
        results = []
        for backend in backends:
            with Server(run, backend, args.workers) as server:
                load(server.url, data, 1, 2.0, 20)  # warm-up: first allocations, lazy imports
                for n in args.clients.split(","):
                    results.append(
                        load(server.url, data, int(n), args.seconds, args.max_requests, backend)
                    )

    table = Table(
        "backend", "clients", "requests", "req/s", "p50 ms", "p99 ms", "errors", "× 1 client",
        title=f"pixtell serve /v1/classify, {args.workers} worker threads, "
        f"{len(data) // 1024} kB JPEG, model {args.run or args.model}",
    )  # fmt: skip
    for r in results:
        base = next(b for b in results if b.backend == r.backend).rps
        table.add_row(
            r.backend, str(r.clients), str(r.requests), f"{r.rps:.1f}", f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}", str(r.errors), f"{r.rps / base:.2f}",
        )  # fmt: skip
    Console().print(table)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
