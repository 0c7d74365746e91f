# Two entry points: `make demo` (install, build the demo archive, serve it) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench clean stilts

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

# The test suite checks the live service with STILTS (taplint, votlint, datalinklint), a Debian
# package: installed here when missing and this is root on a Debian-like system, else a clear stop.
stilts:
	@command -v stilts >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing STILTS (apt-get install stilts) for the IVOA validators the tests run"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stilts >/dev/null; \
	  else \
	    echo "make test needs STILTS (taplint, votlint, datalinklint) on PATH." >&2; \
	    echo "Install it with 'sudo apt-get install stilts' (Debian, Ubuntu), or get stilts.jar from" >&2; \
	    echo "https://www.star.bris.ac.uk/~mbt/stilts/ and put a 'stilts' script on PATH; then run make test again." >&2; \
	    exit 1; \
	  fi; }

test: install stilts
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check model service tests bench

bench: install
	$(BIN)/python bench/miles.py
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf var build *.egg-info
