# One-command set-up on a fresh machine: every target creates .venv and installs mlpvision with its dev extras.
# --no-cache-dir: the registry's torch brings several GB of CUDA wheels (the venv is ~6 GB); pip's cache would keep a
# second, compressed copy of them, and a CI run once failed on a nearly full disk while installing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-inductor lint docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mlpvision demo

# The default suite in TEST_WORKERS processes (pytest-xdist) of one torch thread each: on 2 cores 12.6 min against
# 20.2 min in one process with 2 threads (2026-12-03, AVX2-only AMD EPYC; the tests are many small forwards, which
# two threads barely speed up). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow and not inductor"

test-inductor: $(STAMP)
	$(PY) -m pytest -q -m inductor

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache .importlinter

# The documentation site, built offline into site/ (mkdocs.yml; --strict: a broken link or docstring is an error).
# The docs extra goes into the same .venv, stamped apart so that pyproject.toml changes reinstall it.
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-cache-dir -e '.[dev,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache site
