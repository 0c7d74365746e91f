# Two entry points: `make demo` (install, build the demo archive, serve it) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench clean stilts chromium vendor

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

# The explorer's browser tests drive the system's Chromium (never a downloaded one) with Playwright.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$LATENTVO_CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Chromium (apt-get install chromium) for the explorer's browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "make test needs Chromium for the explorer's browser tests." >&2; \
	    echo "Install it with 'sudo apt-get install chromium' (Debian, Ubuntu), or set LATENTVO_CHROMIUM" >&2; \
	    echo "to a Chromium or Chrome executable; then run make test again." >&2; \
	    exit 1; \
	  fi; }

test: install stilts chromium
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check model service tests bench

bench: install
	$(BIN)/python bench/miles.py
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf var build *.egg-info

# Browser libraries of the explorer pages, from the npm registry (see service/static/vendor/README.md).
vendor:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	while read -r name version files; do \
	  (cd "$$tmp" && npm pack -q "$$name@$$version" >/dev/null && mkdir -p "$$name" && tar xzf "$$name-$$version.tgz" -C "$$name"); \
	  mkdir -p "service/static/vendor/$$name"; \
	  for f in $$files; do cp "$$tmp/$$name/package/$$f" "service/static/vendor/$$name/"; done; \
	  cp "$$tmp/$$name/package/LICENSE" "service/static/vendor/$$name/"; \
	done < service/static/vendor/packages.txt
