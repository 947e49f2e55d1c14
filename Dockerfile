# pixtell serve on the CPU: REST API + Gradio page on port 7860.
#   docker build -t pixtell .
#   docker run --rm -p 127.0.0.1:7860:7860 -v "$PWD/runs:/runs:ro" pixtell serve /runs/classify/NAME --host 0.0.0.0
# or: docker compose up   (see compose.yaml)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    GRADIO_TEMP_DIR=/tmp/gradio \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/cache

WORKDIR /app

# CPU-only torch first, from PyTorch's CPU index: the default wheels bundle CUDA (gigabytes).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.2,<2.15" "torchvision>=0.17,<0.30"

# Dependencies change less often than the code: copy the metadata, then the package.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[serve]"

# Never run as root; run directories arrive read-only through the /runs volume.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin pixtell \
    && mkdir -p /runs && chown pixtell:pixtell /runs
USER pixtell
VOLUME ["/runs"]
EXPOSE 7860

# No curl in slim images: Python's urllib does the probe (/health needs no API key).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/health', timeout=4)"]

ENTRYPOINT ["pixtell"]
# Inside a container 127.0.0.1 is unreachable from the host: bind all interfaces here and
# publish the port on the host's loopback (compose.yaml does) or set PIXTELL_API_KEY.
CMD ["serve", "/runs/model", "--host", "0.0.0.0", "--port", "7860"]
