"""The Gradio page at ``/``: one tab per loaded run (probabilities, caption, drawn boxes)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from PIL import Image

from pixtell.data.images import ImageLoadError, load_image
from pixtell.serve.adapters import Adapter, CaptionAdapter

if TYPE_CHECKING:
    from fastapi import FastAPI

    from pixtell.serve.app import Service


def _image(path: str | None, adapter: Adapter) -> Image.Image:
    if not path:
        raise gr.Error("upload an image first")
    try:
        return load_image(path, max_pixels=adapter.max_pixels, min_size=adapter.min_size)
    except ImageLoadError as exc:
        raise gr.Error(exc.reason) from None


def show_classify(adapter: Adapter, path: str | None) -> dict[str, float]:
    """Class → probability, as ``gr.Label`` shows it (``gr.Error`` for unusable files)."""
    result = adapter.predict(_image(path, adapter))
    return {t["label"]: t["probability"] for t in result["topk"]}


def show_caption(adapter: Adapter, path: str | None) -> tuple[str, str | None]:
    """The caption and, for attention models, a PNG of the heat-map per word."""
    image = _image(path, adapter)
    caption = adapter.predict(image)["caption"]
    if not (isinstance(adapter, CaptionAdapter) and adapter.model.has_attention):
        return caption, None
    # Gradio copies the file into its cache when we return; the folder stays for it to read
    folder = Path(tempfile.mkdtemp(prefix="pixtell-attention-"))
    png = adapter.attention_map(image, folder / "attention.png")
    return caption, str(png) if png else None


def show_detect(adapter: Adapter, path: str | None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The image with its boxes drawn, and the objects as JSON."""
    from pixtell.detect.predict import draw_boxes

    image = _image(path, adapter)
    objects = adapter.predict(image)["objects"]
    boxes = np.asarray([o["box"] for o in objects], dtype=np.float32).reshape(-1, 4)
    captions = [f"{o['label']} {o['score']:.2f}" for o in objects]
    return draw_boxes(image, boxes, captions, ["#d62728"] * len(objects), max_side=640), objects


def _outputs(adapter: Adapter) -> list[Any]:
    if adapter.task == "classify":
        return [
            gr.Label(label="class probabilities", num_top_classes=5, elem_id=f"out-{adapter.name}")
        ]
    if adapter.task == "caption":
        attention = isinstance(adapter, CaptionAdapter) and adapter.model.has_attention
        return [
            gr.Textbox(label="caption", elem_id=f"out-{adapter.name}"),
            gr.Image(label="attention per word", visible=attention),
        ]
    return [
        gr.Image(label="boxes", elem_id=f"img-{adapter.name}"),
        gr.JSON(label="objects", elem_id=f"out-{adapter.name}"),
    ]


_SHOW = {"classify": show_classify, "caption": show_caption, "detect": show_detect}


def _handler(adapter: Adapter) -> Callable[[str | None], Any]:
    show = _SHOW[adapter.task]

    def run(path: str | None) -> Any:
        return show(adapter, path)

    return run


def build_ui(service: Service) -> gr.Blocks:
    """A Blocks page with a tab per run of ``service``."""
    with gr.Blocks(title="pixtell", analytics_enabled=False) as demo:
        gr.Markdown("# pixtell\nUpload an image; the REST API is documented at [/docs](/docs).")
        for adapter in service.adapters.values():
            with gr.Tab(f"{adapter.name} ({adapter.task})", elem_id=f"tab-{adapter.name}"):
                with gr.Row():
                    with gr.Column():
                        upload = gr.Image(
                            type="filepath",
                            sources=["upload"],
                            label="image",
                            elem_id=f"in-{adapter.name}",
                        )
                        button = gr.Button("Run", variant="primary", elem_id=f"run-{adapter.name}")
                    with gr.Column():
                        outputs = _outputs(adapter)
                button.click(_handler(adapter), inputs=upload, outputs=outputs, api_name=False)
    demo.queue(default_concurrency_limit=service.workers)
    return demo


def mount_ui(app: FastAPI, service: Service) -> FastAPI:
    """Mount the page at ``/`` (the API's own routes, registered first, keep precedence)."""
    return gr.mount_gradio_app(app, build_ui(service), path="/", ssr_mode=False, footer_links=[])
