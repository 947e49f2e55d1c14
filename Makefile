# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# torch/torchvision first, pinned to the builds that lie on this machine's disk;
# override with e.g. `make TORCH="torch torchvision" test` elsewhere.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[dev,serve,export]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/pixtell demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench

bench: $(VENV)/.installed
	$(BIN)/python bench/dataloading.py

clean:
	rm -rf $(VENV) runs demo-runs
