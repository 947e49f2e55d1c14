# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# torch/torchvision first, pinned to the builds that lie on this machine's disk;
# override with e.g. `make TORCH="torch torchvision" test` elsewhere.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[dev,serve,export,clip,blip,inspect]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/pixtell demo

# The serve tests drive the Gradio page in Debian's Chromium; without it they skip that test.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (command -v apt-get >/dev/null && (apt-get install -y -q chromium chromium-driver \
	    || (apt-get update -q && apt-get install -y -q chromium chromium-driver))) >/dev/null 2>&1 || \
	  echo "chromium/chromedriver not installed: the browser test will be skipped"

test: $(VENV)/.installed browser
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench

bench: $(VENV)/.installed
	$(BIN)/python bench/dataloading.py
	$(BIN)/python bench/caption.py
	$(BIN)/python bench/detect_eval.py
	$(BIN)/python bench/onnx.py
	$(BIN)/python bench/train_speed.py   # these two need Debian's dataset-fashion-mnist
	$(BIN)/python bench/inspect_quality.py

clean:
	rm -rf $(VENV) runs demo-runs
