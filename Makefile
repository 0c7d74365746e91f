# Two entry points: `make demo` (install, build the demo archive, serve it) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench bench-miles clean stilts chromium postgresql vendor

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

# $(call debian_tool,PACKAGE,WHAT FOR,OR ELSE,SKIP IF): a recipe that finds the command PACKAGE on
# PATH, or installs that Debian package when this is root on a system with apt-get, or else stops
# at once saying how to get it. SKIP IF is a shell test that makes the tool unnecessary.
debian_tool = @$(4) command -v $(1) >/dev/null 2>&1 || { \
  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
    echo "installing $(1) (apt-get install $(1)) for $(2)"; \
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; \
  else \
    echo "make test needs $(1) for $(2)." >&2; \
    echo "Install it with 'sudo apt-get install $(1)' (Debian and Ubuntu) $(3); then run make test again." >&2; \
    exit 1; \
  fi; }

# The test suite checks the live service with the IVOA validators of STILTS.
stilts:
	$(call debian_tool,stilts,the IVOA validators taplint and votlint and datalinklint,or put stilts.jar from https://www.star.bris.ac.uk/~mbt/stilts/ behind a 'stilts' script on PATH)

# The explorer's browser tests drive the system's Chromium (never a downloaded one) with Playwright.
chromium:
	$(call debian_tool,chromium,the explorer's browser tests,or set LATENTVO_CHROMIUM to a Chromium or Chrome executable,[ -n "$$LATENTVO_CHROMIUM" ] ||)

# The storage tests run every stage and endpoint on a PostgreSQL server of their own (tests/postgres.py
# starts one in a temporary directory): they need the server programs, not a running service, and
# q3c (Debian's postgresql-<major>-q3c), the sky index that cone searches use there.
postgresql:
	$(call debian_tool,postgresql,the archive tests on PostgreSQL,or set LATENTVO_POSTGRES_BIN to the directory holding initdb and pg_ctl,[ -n "$$LATENTVO_POSTGRES_BIN" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ||)
	@[ -n "$$LATENTVO_POSTGRES_BIN" ] || ls /usr/share/postgresql/*/extension/q3c.control >/dev/null 2>&1 || { \
	  major=$$(ls /usr/lib/postgresql | sort -n | tail -1); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing q3c (apt-get install postgresql-$$major-q3c) for the cone searches on PostgreSQL"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-$$major-q3c >/dev/null; \
	  else \
	    echo "make test needs q3c for the cone searches on PostgreSQL." >&2; \
	    echo "Install it with 'sudo apt-get install postgresql-$$major-q3c' (Debian and Ubuntu); then run make test again." >&2; \
	    exit 1; \
	  fi; }

test: install stilts chromium postgresql
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check model service tests bench

# `make bench`: a synthetic archive of BENCH_N spectra through every pipeline stage, then served under
# load (wrk), written up in bench/RESULTS.md. `make bench BENCH_N=1000000` is the full-size run.
BENCH_N ?= 20000
BENCH_DURATION ?= 30
BENCH_WORK ?= var/bench-pipeline

bench: install
	$(BIN)/python bench/pipeline.py --n $(BENCH_N) --keep --work $(BENCH_WORK)
	$(BIN)/python bench/load.py --root $(BENCH_WORK)/archive --duration $(BENCH_DURATION)
	$(BIN)/python bench/report.py

# The real MILES library (a path option: python bench/miles.py --help).
bench-miles: install
	$(BIN)/python bench/miles.py

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
