# Two entry points: `make demo` (install, build the demo archive, serve it) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned to the CPU wheel first so that the range in setup.py installs nothing bigger;
# GPU users install their own torch build before `make install`.
$(STAMP): setup.py | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/latentvo demo

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check model service tests bench

bench: install
	$(BIN)/python bench/miles.py
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf var build *.egg-info
