"""The FastAPI app: ``/health``, ``/models``, ``/v1/{classify,caption,detect}`` and the UI at ``/``.

Uploads are size-limited while they stream in, decoded by the safe loader and run in a
bounded thread pool; every bad input is a 4xx JSON ``{"detail": reason}``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse
from PIL import UnidentifiedImageError

from pixtell import __version__
from pixtell.data.images import ImageLoadError, load_image
from pixtell.runs import Run
from pixtell.serve.adapters import TASKS, Adapter, Backend, load_adapters

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_KEY_ENV = "PIXTELL_API_KEY"
OPEN_PATHS = frozenset({"/health"})
# room for the multipart boundary and part headers around a file of exactly the limit
_MULTIPART_SLACK = 16 * 1024


class UploadTooLarge(Exception):
    """Raised from ``receive`` once a request body has passed the limit."""


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413.

    A declared Content-Length over the limit is refused before any byte is read; otherwise
    bytes are counted as they arrive and reading stops at the limit, so an oversized upload
    is never read whole (Starlette's form parser would spool all of it first).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _json(scope, receive, send, 400, "invalid Content-Length header")
                return
            if int(declared) > self.max_bytes:
                await _json(scope, receive, send, 413, self._message())
                return
        seen = 0
        exceeded = started = False

        async def counted() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise UploadTooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if exceeded:  # whatever the app answers to the aborted body, ours replaces it
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except UploadTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await _json(scope, receive, send, 413, self._message())

    def _message(self) -> str:
        mb = (self.max_bytes - _MULTIPART_SLACK) / 2**20
        return f"upload over the limit of {mb:g} MB (--max-upload-mb); send a smaller image"


class ApiKey:
    """ASGI middleware: every path but ``/health`` needs the key, as ``X-API-Key: KEY``,
    ``Authorization: Bearer KEY`` or HTTP Basic auth with KEY as the password (browsers
    ask for it, which is how the UI is opened)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self._given(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await _json(
                scope,
                receive,
                send,
                401,
                "missing or wrong API key; send the header X-API-Key",
                {"WWW-Authenticate": 'Basic realm="pixtell"'},
            )

    def _given(self, scope: Scope) -> bool:
        candidates = [_header(scope, b"x-api-key") or ""]
        auth = _header(scope, b"authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            candidates.append(value.strip())
        elif scheme.lower() == "basic":
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                candidates.append(base64.b64decode(value.strip()).decode().partition(":")[2])
        # compare every candidate in constant time
        return any([secrets.compare_digest(c.encode(), self.key) for c in candidates])


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _json(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
) -> None:
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(
        scope, receive, send
    )


def status_for(exc: ImageLoadError) -> int:
    """The HTTP status of an unusable upload: 413 too many pixels, 415 not an image,
    400 empty, 422 truncated or corrupt."""
    if "over the limit" in exc.reason and "pixels" in exc.reason:
        return 413
    if isinstance(exc.__cause__, UnidentifiedImageError):
        return 415
    if "empty" in exc.reason:
        return 400
    return 422


class Service:
    """The loaded adapters (by name) and the bounded thread pool the REST routes run in.

    (The Gradio page runs in Gradio's queue, with the same number of concurrent workers.)
    """

    def __init__(self, adapters: Sequence[Adapter], workers: int) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be at least 1 (got {workers})")
        self.adapters = {a.name: a for a in adapters}
        self.workers = workers
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        # created lazily: a CapacityLimiter belongs to the event loop that first uses it
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.workers)
        return self._limiter

    def pick(self, task: str, model: str | None) -> Adapter:
        """The adapter named ``model`` (which must be a ``task`` run), or the task's first."""
        if model is not None:
            adapter = self.adapters.get(model)
            if adapter is None:
                known = ", ".join(self.adapters) or "none"
                raise HTTPException(404, f"no model named {model!r}; loaded: {known}")
            if adapter.task != task:
                raise HTTPException(
                    409, f"{model!r} is a {adapter.task} model; use /v1/{adapter.task}"
                )
            return adapter
        for adapter in self.adapters.values():
            if adapter.task == task:
                return adapter
        loaded = ", ".join(sorted({a.task for a in self.adapters.values()}))
        raise HTTPException(404, f"no {task} model is loaded (this server serves: {loaded})")

    def run_file(self, adapter: Adapter, path: Path) -> dict[str, Any]:
        """Decode ``path`` safely and predict; ``ImageLoadError`` for unusable files."""
        t0 = time.perf_counter()
        image = load_image(path, max_pixels=adapter.max_pixels, min_size=adapter.min_size)
        t1 = time.perf_counter()
        result = adapter.predict(image)
        t2 = time.perf_counter()
        return {
            "model": adapter.name,
            "task": adapter.task,
            "image": {"width": image.width, "height": image.height},
            "result": result,
            "timing_ms": {
                "decode": round((t1 - t0) * 1e3, 3),
                "inference": round((t2 - t1) * 1e3, 3),
            },
        }

    def run_upload(self, adapter: Adapter, upload: UploadFile) -> dict[str, Any]:
        """Copy the spooled upload to a private temporary file and run it (in a worker)."""
        with tempfile.TemporaryDirectory(prefix="pixtell-serve-") as tmp:
            path = Path(tmp) / "upload"
            with open(path, "wb") as fh:
                shutil.copyfileobj(upload.file, fh, 1 << 20)
            return self.run_file(adapter, path)

    async def handle(self, task: str, model: str | None, upload: UploadFile) -> dict[str, Any]:
        adapter = self.pick(task, model)
        t0 = time.perf_counter()
        try:
            out = await anyio.to_thread.run_sync(
                self.run_upload, adapter, upload, limiter=self.limiter
            )
        except ImageLoadError as exc:
            raise HTTPException(status_for(exc), exc.reason) from None
        finally:
            await upload.close()
        out["timing_ms"]["total"] = round((time.perf_counter() - t0) * 1e3, 3)
        return out


FileField = Annotated[UploadFile, File(description="The image (JPEG, PNG, BMP, GIF, WebP, TIFF).")]
ModelQuery = Annotated[
    str | None, Query(description="Run name from /models (default: the task's first run).")
]


def create_app(
    runs: Sequence[str | Path | Run | Adapter],
    *,
    max_upload_mb: float = 10.0,
    api_key: str | None = None,
    workers: int = 4,
    max_pixels: int | None = None,
    backend: Backend = "torch",
    ui: bool = True,
) -> FastAPI:
    """The serving app for ``runs`` (run directories, ``Run``s or ready adapters).

    ``api_key`` (default: the ``PIXTELL_API_KEY`` environment variable) guards every route
    but ``/health``; ``max_pixels`` overrides each run's decompression-bomb limit;
    ``backend="onnx"`` serves every run from its exported ONNX files (``pixtell export``).
    """
    if max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive (got {max_upload_mb})")
    ready = [r for r in runs if isinstance(r, Adapter)]
    paths = [r for r in runs if not isinstance(r, Adapter)]
    # onnxruntime's threads would oversubscribe the cores when `workers` requests run at once
    threads = max(1, (os.cpu_count() or 1) // workers)
    adapters = ready + (
        load_adapters(paths, max_pixels=max_pixels, backend=backend, threads=threads)
        if paths
        else []
    )
    if not adapters:
        raise ValueError("pass at least one run directory to serve")
    service = Service(adapters, workers)
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None

    app = FastAPI(
        title="pixtell",
        version=__version__,
        description="Classify, caption and detect with trained pixtell runs.",
    )
    app.state.service = service

    @app.get("/health", tags=["meta"])
    def health() -> dict[str, Any]:
        """Liveness (no API key needed)."""
        return {"status": "ok", "models": len(service.adapters)}

    @app.get("/models", tags=["meta"])
    def models() -> list[dict[str, Any]]:
        """The loaded runs: name, task, architecture, classes."""
        return [a.info() for a in service.adapters.values()]

    def route(task: str) -> Callable[..., Awaitable[dict[str, Any]]]:
        async def endpoint(file: FileField, model: ModelQuery = None) -> dict[str, Any]:
            return await service.handle(task, model, file)

        endpoint.__name__ = task
        endpoint.__doc__ = f"Run a {task} model on one uploaded image."
        return endpoint

    for task in TASKS:
        app.post(f"/v1/{task}", tags=["predict"])(route(task))

    if ui:
        from pixtell.serve.ui import mount_ui

        mount_ui(app, service)
    app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * 2**20) + _MULTIPART_SLACK)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)  # outermost: no key, no body read
    return app
