"""``pixtell serve``: a FastAPI app (REST + OpenAPI) with a Gradio page for every loaded run.

Needs the ``serve`` extra (fastapi, uvicorn, python-multipart, gradio).
"""

from pixtell.serve.adapters import (
    Adapter,
    CaptionAdapter,
    ClassifyAdapter,
    DetectAdapter,
    load_adapter,
    load_adapters,
    run_task,
)
from pixtell.serve.app import create_app, status_for

__all__ = [
    "Adapter",
    "CaptionAdapter",
    "ClassifyAdapter",
    "DetectAdapter",
    "create_app",
    "load_adapter",
    "load_adapters",
    "run_task",
    "status_for",
]
