"""Benchmark: onnxruntime against eager PyTorch for MobileNetV2 (weights=None) on the CPU.

In this one process the model is exported with pixtell's exporter (dynamic batch), then for
each batch size the two backends take turns ``--rounds`` times, ``--runs`` timed calls each
after a warm-up; each backend's best round median is reported (the steadiest figure on a
busy machine), with both using ``--threads`` intra-op threads. Outputs must agree to 1e-4
or the script exits with status 1.

    python bench/onnx.py --threads 2 --batch-sizes 1,8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would hide the
# real ``onnx`` package from torch.onnx and onnxruntime.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torchvision.models import mobilenet_v2  # noqa: E402

from pixtell.export import export_module, ort_session  # noqa: E402
from pixtell.profile import time_calls  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=20, help="timed calls per round")
    ap.add_argument("--rounds", type=int, default=3, help="turns each backend takes")
    args = ap.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mobilenet_v2(weights=None).eval()
    size = args.img_size
    console = Console()
    table = Table(
        "batch",
        "torch ms",
        "onnxruntime ms",
        "speed-up",
        "torch img/s",
        "onnxruntime img/s",
        title=f"MobileNetV2 {size}px, {args.threads} threads ({torch.__version__})",
    )
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        path = export_module(
            model,
            (torch.randn(2, 3, size, size),),
            Path(tmp) / "mobilenet_v2.onnx",
            input_names=["images"],
            output_names=["logits"],
            dynamic_batch=True,
        )
        session = ort_session(path, threads=args.threads)
        for batch in batch_sizes:
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
            feed = {"images": x.numpy()}
            with torch.inference_mode():
                want = model(x).numpy()
            diff = float(np.abs(session.run(None, feed)[0] - want).max())
            if diff > 1e-4:
                console.print(f"[red]batch {batch}: outputs differ by {diff:.2e}[/]")
                ok = False
            best = {"torch": float("inf"), "onnx": float("inf")}
            for _ in range(args.rounds):
                with torch.inference_mode():
                    t = time_calls(lambda: model(x), args.runs, warmup=3)  # noqa: B023
                best["torch"] = min(best["torch"], statistics.median(t))
                t = time_calls(lambda: session.run(None, feed), args.runs, warmup=3)  # noqa: B023
                best["onnx"] = min(best["onnx"], statistics.median(t))
            table.add_row(
                str(batch),
                f"{best['torch'] * 1e3:.1f}",
                f"{best['onnx'] * 1e3:.1f}",
                f"{best['torch'] / best['onnx']:.2f}x",
                f"{batch / best['torch']:.1f}",
                f"{batch / best['onnx']:.1f}",
            )
    console.print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
