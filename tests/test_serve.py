"""``pixtell serve``: every route and every bad input through FastAPI's TestClient, the upload
limit at the ASGI level, the worker pool, the API key, and the real server in headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("gradio", reason="the serve extra (gradio) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from pixtell import caption, classify, detect  # noqa: E402
from pixtell.caption.vocab import Vocabulary  # noqa: E402
from pixtell.models import create  # noqa: E402
from pixtell.models.io import save_model  # noqa: E402
from pixtell.serve import Adapter, create_app, load_adapter, run_task  # noqa: E402

KEY = "s3cret-key"


def _png(size: tuple[int, int] = (48, 40), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, (240, 240, 240))
    img.paste(color, (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _upload(data: bytes, name: str = "x.png") -> dict[str, Any]:
    return {"file": (name, data, "application/octet-stream")}


def _untrained_run(root: Path, name: str, meta: dict[str, Any], vocab: list[str] | None = None):
    """A run directory as training leaves it (weights + model.json), with random weights."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    model = create(
        meta["arch"], meta["task"], num_classes=meta["num_classes"], pretrained=False,
        **meta.get("arch_kwargs", {}),
    )  # fmt: skip
    save_model(model, run_dir, meta)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"task": meta["task"]}))
    if vocab is not None:
        Vocabulary(vocab).save(run_dir / "vocab.json")
    return run_dir


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    words = ["a", "red", "square", "on", "grey", "background"]
    meta = {
        "task": "caption",
        "arch": "show_attend_tell",
        "num_classes": len(words) + 4,
        "arch_kwargs": {
            "encoder": "small_cnn",
            "embed_dim": 8,
            "hidden_dim": 16,
            "dropout": 0.0,
            "attention": "soft",
            "attention_dim": 8,
            "grid": None,
        },  # fmt: skip
        "vocab": "vocab.json",
        "img_size": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "max_len": 6,
    }
    return _untrained_run(tmp_path_factory.mktemp("serve-runs"), "cap", meta, words)


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    meta = {
        "task": "detect",
        "arch": "tiny_fcos",
        "num_classes": 3,
        "class_names": ["circle", "square", "star"],
        "arch_kwargs": {"img_size": 64},
        "img_size": 64,
    }
    return _untrained_run(tmp_path_factory.mktemp("serve-runs"), "det", meta)


@pytest.fixture(scope="module")
def client(trained_run: classify.Run, caption_run: Path, detect_run: Path) -> TestClient:
    app = create_app([trained_run, caption_run, detect_run], max_upload_mb=0.25, api_key="")
    with TestClient(app) as c:
        yield c


# -- routes ----------------------------------------------------------------------------------
def test_health_and_models(client: TestClient, trained_run: classify.Run) -> None:
    assert client.get("/health").json() == {"status": "ok", "models": 3}
    models = {m["name"]: m for m in client.get("/models").json()}
    assert {n: m["task"] for n, m in models.items()} == {
        "shared": "classify",
        "cap": "caption",
        "det": "detect",
    }
    meta = json.loads((trained_run.dir / "model.json").read_text())
    assert models["shared"]["classes"] == meta["class_names"]
    assert models["det"]["classes"] == ["circle", "square", "star"]
    assert "/tmp" not in json.dumps(models)  # no server paths leak


def test_openapi_lists_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/models", "/v1/classify", "/v1/caption", "/v1/detect"} <= set(paths)
    body = paths["/v1/classify"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    assert client.get("/docs").status_code == 200


def test_classify_equals_the_predictor(
    client: TestClient, trained_run: classify.Run, tmp_path: Path
) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(_png())
    r = client.post("/v1/classify", files=_upload(image.read_bytes()))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "shared" and body["task"] == "classify"
    assert body["image"] == {"width": 48, "height": 40}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0
    ref = classify.Classifier.from_run(trained_run, device="cpu").predict([image], topk=5)[0]
    got = [(t["label"], t["probability"]) for t in body["result"]["topk"]]
    assert [label for label, _ in got] == [label for label, _ in ref.topk]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in ref.topk], rtol=1e-5)
    # ``model=`` picks a run by name
    again = client.post("/v1/classify?model=shared", files=_upload(image.read_bytes()))
    assert again.json()["result"] == body["result"]


def test_caption_equals_caption_predict(
    client: TestClient, caption_run: Path, tmp_path: Path
) -> None:
    image = tmp_path / "b.jpg"
    image.write_bytes(_jpeg())
    r = client.post("/v1/caption", files=_upload(image.read_bytes(), "b.jpg"))
    assert r.status_code == 200, r.text
    ref = caption.predict(caption_run, [image], beam_size=3)[0]
    assert r.json()["model"] == "cap"
    assert r.json()["result"]["caption"] == ref.caption
    assert r.json()["result"]["words"] == ref.words


def test_detect_equals_detect_predict(client: TestClient, detect_run: Path, tmp_path: Path) -> None:
    image = tmp_path / "c.jpg"
    image.write_bytes(_jpeg())
    r = client.post("/v1/detect", files=_upload(image.read_bytes(), "c.jpg"))
    assert r.status_code == 200, r.text
    objects = r.json()["result"]["objects"]
    ref = detect.predict(detect_run, [image], conf=0.3, out=tmp_path / "pred", draw=False)[0]
    assert [o["label"] for o in objects] == ref.labels
    np.testing.assert_allclose([o["score"] for o in objects], ref.scores, atol=1e-4)
    np.testing.assert_allclose(
        np.reshape([o["box"] for o in objects], (-1, 4)), np.reshape(ref.boxes, (-1, 4)), atol=0.01
    )
    for o in objects:
        x0, y0, x1, y1 = o["box"]
        assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64 and 0.3 <= o["score"] <= 1


def test_ui_page_has_a_tab_per_run(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    config = client.get("/config")
    assert config.status_code == 200
    labels = {c.get("props", {}).get("label") for c in config.json()["components"]}
    assert {"shared (classify)", "cap (caption)", "det (detect)"} <= labels


def test_ui_handlers_show_what_the_api_returns(client: TestClient, tmp_path: Path) -> None:
    import gradio as gr

    from pixtell.serve.ui import show_caption, show_classify, show_detect

    service = client.app.state.service
    image = tmp_path / "d.jpg"
    image.write_bytes(_jpeg())
    api = {
        task: client.post(f"/v1/{task}", files=_upload(image.read_bytes())).json()["result"]
        for task in ("classify", "caption", "detect")
    }
    probs = show_classify(service.adapters["shared"], str(image))
    assert probs == {t["label"]: t["probability"] for t in api["classify"]["topk"]}
    text, heat = show_caption(service.adapters["cap"], str(image))
    assert text == api["caption"]["caption"]
    assert heat is not None and Image.open(heat).format == "PNG"  # one panel per word
    drawn, objects = show_detect(service.adapters["det"], str(image))
    assert objects == api["detect"]["objects"]
    assert drawn.ndim == 3 and drawn.shape[0] == drawn.shape[1] and drawn.shape[2] == 3
    assert drawn.dtype == np.uint8
    bad = tmp_path / "bad.png"
    bad.write_bytes(_png()[:70])
    with pytest.raises(gr.Error, match="truncated"):
        show_classify(service.adapters["shared"], str(bad))
    with pytest.raises(gr.Error, match="upload an image"):
        show_detect(service.adapters["det"], None)


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"%PDF-1.4 definitely not a picture", 415, "not an image"),
        (b"<html><body>hi</body></html>", 415, "not an image"),
        (_png()[:70], 422, "truncated"),
        (_jpeg()[:400], 422, "truncated"),
    ],
    ids=["empty", "pdf", "html", "truncated-png", "truncated-jpeg"],
)
@pytest.mark.parametrize("route", ["classify", "caption", "detect"])
def test_unusable_uploads_are_4xx_with_the_reason(
    client: TestClient, route: str, data: bytes, status: int, words: str
) -> None:
    r = client.post(f"/v1/{route}", files=_upload(data))
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert client.get("/health").status_code == 200  # still serving


def test_missing_file_field_is_422(client: TestClient) -> None:
    assert client.post("/v1/classify").status_code == 422
    assert client.post("/v1/classify", data={"file": "just text"}).status_code == 422


def test_unknown_model_and_wrong_task(client: TestClient) -> None:
    r = client.post("/v1/classify?model=nope", files=_upload(_png()))
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = client.post("/v1/detect?model=shared", files=_upload(_png()))
    assert r.status_code == 409 and "/v1/classify" in r.json()["detail"]


def test_a_task_without_a_run_is_404(trained_run: classify.Run) -> None:
    with TestClient(create_app([trained_run], ui=False, api_key="")) as c:
        for route in ("caption", "detect"):
            r = c.post(f"/v1/{route}", files=_upload(_png()))
            assert r.status_code == 404 and f"no {route} model" in r.json()["detail"]


def test_declared_upload_over_the_limit_is_413(client: TestClient) -> None:
    big = np.random.default_rng(1).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "PNG")  # ~470 kB of noise, over 0.25 MB
    assert len(buf.getvalue()) > 0.3 * 2**20
    r = client.post("/v1/classify", files=_upload(buf.getvalue()))
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["detail"]


def test_streamed_upload_is_refused_before_it_is_read_whole(trained_run: classify.Run) -> None:
    """No Content-Length (chunked): the app stops pulling chunks once the limit is passed."""
    app = create_app([trained_run], max_upload_mb=0.1, ui=False, api_key="")
    chunk, total = b"x" * 16384, 200  # 3.2 MB offered, 0.1 MB allowed
    pulled = 0
    sent: list[dict[str, Any]] = []

    head = (
        b'--zzz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        body = head + chunk if pulled == 1 else chunk
        return {"type": "http.request", "body": body, "more_body": pulled < total}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/classify", "raw_path": b"/v1/classify",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"multipart/form-data; boundary=zzz")],
    }  # fmt: skip
    anyio.run(app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    assert pulled <= 0.1 * 2**20 / len(chunk) + 3 < total
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert "--max-upload-mb" in json.loads(body)["detail"]


def test_real_server_refuses_a_chunked_upload_early(trained_run: classify.Run) -> None:
    """Over TCP: a 64 MB chunked upload to a 1 MB server gets 413 long before it is all sent."""
    import select

    import uvicorn

    app = create_app([trained_run], max_upload_mb=1, ui=False, api_key="")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        head = (
            b'--zzz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        chunk = b"x" * 65536
        sent, reply = 0, b""
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=zzz\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            body = head + chunk
            try:
                while sent < 64 * 2**20:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(body), body))
                    sent += len(body)
                    body = chunk
                    if select.select([sock], [], [], 0)[0]:
                        break
            except (BrokenPipeError, ConnectionResetError):
                pass
            with contextlib.suppress(OSError):
                while data := sock.recv(65536):
                    reply += data
                    if b"\r\n\r\n" in reply and reply.endswith(b"}"):
                        break
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"--max-upload-mb" in reply
        assert sent < 16 * 2**20  # the rest was never read (kernel buffers hold a few MB)
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_decompression_bomb_is_refused(trained_run: classify.Run) -> None:
    with TestClient(create_app([trained_run], max_pixels=1000, ui=False, api_key="")) as c:
        r = c.post("/v1/classify", files=_upload(_png((48, 40))))  # 1,920 pixels
        assert r.status_code == 413 and "decompression bomb" in r.json()["detail"]
        assert c.get("/models").json()[0]["max_pixels"] == 1000
        ok = c.post("/v1/classify", files=_upload(_png((30, 30))))
        assert ok.status_code == 200


def test_no_url_fetching(client: TestClient) -> None:
    """A URL where the file should be is data, not something the server goes to fetch."""
    r = client.post("/v1/classify", data={"file": "http://127.0.0.1:9/x.png"})
    assert r.status_code == 422
    r = client.post("/v1/classify", files=_upload(b"http://127.0.0.1:9/x.png"))
    assert r.status_code == 415


# -- API key ---------------------------------------------------------------------------------
def test_api_key_guards_every_route_but_health(
    trained_run: classify.Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIXTELL_API_KEY", KEY)
    with TestClient(create_app([trained_run])) as c:
        assert c.get("/health").status_code == 200
        guarded = ["/models", "/docs", "/openapi.json", "/", "/config", "/v1/classify"]
        for path in guarded:
            method = "POST" if path.startswith("/v1") else "GET"
            r = c.request(method, path, files=_upload(_png()) if method == "POST" else None)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"].startswith("Basic")
        wrong = {"X-API-Key": "guess"}
        assert c.get("/models", headers=wrong).status_code == 401
        basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
        for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"},
                        {"Authorization": f"Basic {basic}"}):  # fmt: skip
            assert c.get("/models", headers=headers).status_code == 200
            r = c.post("/v1/classify", files=_upload(_png()), headers=headers)
            assert r.status_code == 200
        assert c.get("/", headers={"X-API-Key": KEY}).status_code == 200


# -- worker pool -----------------------------------------------------------------------------
class _Slow(Adapter):
    """A stand-in model that takes 0.3 s and records how many calls overlap."""

    task = "classify"

    def __init__(self) -> None:
        super().__init__("slow", Path("."), {"class_names": ["x"]}, 10_000)
        self.lock, self.now, self.peak = threading.Lock(), 0, 0

    def predict(self, image: Image.Image) -> dict[str, Any]:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(0.3)
        with self.lock:
            self.now -= 1
        return {"topk": [{"label": "x", "probability": 1.0}]}


@pytest.mark.parametrize("workers", [1, 3])
def test_requests_run_in_a_bounded_worker_pool(workers: int) -> None:
    slow = _Slow()
    with TestClient(create_app([slow], workers=workers, ui=False, api_key="")) as c:
        codes: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: codes.append(
                    c.post("/v1/classify", files=_upload(_png())).status_code
                )
            )
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert codes == [200] * 6
    assert slow.peak == workers


# -- loading and the CLI ---------------------------------------------------------------------
def test_run_task_and_load_errors(trained_run: classify.Run, tmp_path: Path) -> None:
    assert run_task(trained_run) == "classify"
    assert load_adapter(trained_run.dir / "model.json").name == "shared"
    with pytest.raises(FileNotFoundError, match="not a pixtell run"):
        run_task(tmp_path)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "model.json").write_text(json.dumps({"task": "segment"}))
    with pytest.raises(ValueError, match="segment"):
        run_task(odd)


def test_same_named_runs_get_unique_names(trained_run: classify.Run, tmp_path: Path) -> None:
    copy = tmp_path / "other" / "shared"
    shutil.copytree(trained_run.dir, copy)
    with TestClient(create_app([trained_run, copy], ui=False, api_key="")) as c:
        assert [m["name"] for m in c.get("/models").json()] == ["shared", "shared-2"]
        assert c.post("/v1/classify?model=shared-2", files=_upload(_png())).status_code == 200


def test_onnx_backend_serves_the_same_probabilities(
    trained_run: classify.Run, caption_run: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
    from pixtell.export import export_onnx

    run_dir = tmp_path / "shared"
    shutil.copytree(trained_run.dir, run_dir)  # the shared run stays read-only
    with pytest.raises(FileNotFoundError, match="pixtell export"):
        create_app([run_dir], backend="onnx", ui=False, api_key="")
    export_onnx(run_dir)
    image = _jpeg()
    got = {}
    for backend in ("torch", "onnx"):
        with TestClient(create_app([run_dir], backend=backend, ui=False, api_key="")) as c:
            assert c.get("/models").json()[0]["backend"] == backend
            r = c.post("/v1/classify", files=_upload(image, "e.jpg"))
            assert r.status_code == 200, r.text
            got[backend] = r.json()["result"]["topk"]
    assert [t["label"] for t in got["onnx"]] == [t["label"] for t in got["torch"]]
    np.testing.assert_allclose(
        [t["probability"] for t in got["onnx"]],
        [t["probability"] for t in got["torch"]],
        atol=1e-5,
    )
    # captioners too: the exported encoder and decoder step behind the same beam search
    cap_dir = tmp_path / "cap"
    shutil.copytree(caption_run, cap_dir)
    export_onnx(cap_dir)
    captions = {}
    for backend in ("torch", "onnx"):
        with TestClient(create_app([cap_dir], backend=backend, ui=False, api_key="")) as c:
            r = c.post("/v1/caption", files=_upload(image, "e.jpg"))
            assert r.status_code == 200, r.text
            captions[backend] = r.json()["result"]["caption"]
    assert captions["onnx"] == captions["torch"]


def test_cli_serve_refuses_a_missing_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pixtell.cli import app

    res = CliRunner().invoke(app, ["serve", str(tmp_path / "missing")])
    assert res.exit_code == 2
    assert "does not exist" in res.output and "Traceback" not in res.output


# -- the real server in a browser ------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser() -> Any:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None or not Path("/usr/bin/chromedriver").exists():
        pytest.skip("chromium / chromedriver missing (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    flags = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--window-size=1280,1000")  # fmt: skip
    for flag in flags:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def test_real_server_and_gradio_page_in_chromium(trained_run: classify.Run, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser()
    port = _free_port()
    env = {**os.environ, "PIXTELL_API_KEY": "", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(
        [sys.executable, "-m", "pixtell.cli", "serve", str(trained_run.dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stdout.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start in 90 s"
            time.sleep(0.5)
        # the REST API over a real socket
        r = httpx.post(f"{base}/v1/classify", files=_upload(_png()), timeout=30)
        assert r.status_code == 200
        api_label = r.json()["result"]["topk"][0]["label"]

        image = tmp_path / "upload.png"
        image.write_bytes(_png())
        driver.get(base + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#in-shared input[type=file]")))
        driver.find_element(By.CSS_SELECTOR, "#in-shared input[type=file]").send_keys(str(image))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#in-shared img")))
        driver.find_element(By.CSS_SELECTOR, "#run-shared").click()
        wait.until(lambda d: api_label in d.find_element(By.CSS_SELECTOR, "#out-shared").text)
        shown = driver.find_element(By.CSS_SELECTOR, "#out-shared").text
        driver.save_screenshot(str(tmp_path / "serve.png"))
        assert (tmp_path / "serve.png").stat().st_size > 0
        # the Label shows: its title, the top class as a heading, then "class NN%" rows
        lines = shown.splitlines()
        assert lines[:2] == ["class probabilities", api_label]
        top = r.json()["result"]["topk"][0]
        assert lines[2:4] == [top["label"], f"{round(top['probability'] * 100)}%"]
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=30)
