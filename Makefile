# hsrm: `make demo` runs the main job on the embedded model, `make test` runs the tests.
# Both install what they need into .venv first: exactly the lock (requirements.lock), nothing newer.
#   make install      the locked set (pip, --no-deps: the lock is complete), then hsrm, then a check
#                     that the venv equals the lock
#   make test-latest  the newest releases pyproject.toml's ranges allow, in .venv-latest, the whole
#                     suite, and what differs from the lock (run it before `make lock`; not in CI)
#   make lock         re-resolve the lock from pyproject.toml with uv (only after `make test-latest`)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LATEST ?= .venv-latest
STAMP := $(VENV)/.hsrm-installed
LOCK := requirements.lock
LOCK_NODEPS := requirements-nodeps.lock
# Where the pinned CPU build of torch lies (constraints.txt); uv looks nowhere else for it.
FIND_LINKS ?= /opt/wheels
# -qq: pip's warnings about this machine's own index settings are not this project's.
PIP_NODEPS = -m pip install -qq --no-deps
COMPILE = pyproject.toml requirements-build.in --all-extras -c constraints.txt \
	--find-links $(FIND_LINKS) --python-version 3.11 --quiet \
	--custom-compile-command "make lock"

.PHONY: install demo test test-fast test-latest lock check format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK) $(LOCK_NODEPS) constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python $(PIP_NODEPS) -r $(LOCK) -r $(LOCK_NODEPS)
	$(BIN)/python $(PIP_NODEPS) --no-build-isolation -e .
	$(BIN)/python tools/lock.py check $(LOCK) $(LOCK_NODEPS)
	touch $(STAMP)

demo: install
	$(BIN)/hsrm demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q

test-latest: install
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(BIN)/uv pip compile $(COMPILE) --upgrade --no-header --no-annotate -o $(LATEST)/latest.txt
	$(LATEST)/bin/python $(PIP_NODEPS) -r $(LATEST)/latest.txt -r $(LOCK_NODEPS)
	$(LATEST)/bin/python $(PIP_NODEPS) --no-build-isolation -e .
	$(BIN)/python tools/lock.py diff $(LOCK) $(LATEST)/latest.txt
	$(LATEST)/bin/python -m pytest -q

lock: install
	$(BIN)/uv pip compile $(COMPILE) --upgrade -o $(LOCK)
	$(BIN)/uv pip compile requirements-nodeps.in --no-deps --quiet -o $(LOCK_NODEPS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not integration"

check: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_bon.py

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache $(LATEST)
