# onecard — the two commands are `make demo` and `make test`. Each does its own set-up
# (Debian packages via apt-get, .venv from requirements.lock) through scripts/bootstrap.sh,
# which is idempotent: a second run with nothing to install takes well under a second.
SHELL := /bin/bash
BIN := .venv/bin

.PHONY: setup test demo bench lint format lock clean

setup:
	@scripts/bootstrap.sh

## test: lint, type-check, then the whole test suite (unit + integration against real daemons)
test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

## demo: a branch's day on a real edge, then the whole chain (broker, HQ, two branches)
##       for DURATION seconds (default 15), ending with a check of the books
DURATION ?= 15
demo: setup
	$(BIN)/onecard-sim demo
	$(BIN)/onecard-sim chain --duration $(DURATION)

## bench: every benchmark in bench/; each ends with one `BENCH {json}` line
bench: setup
	@set -e; for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script; done

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## lock: re-resolve requirements.lock from pyproject.toml (needs network; commit the result)
lock:
	python3 -m pip install -q --user uv 2>/dev/null || true
	python3 -m uv pip compile pyproject.toml requirements-build.in --extra dev \
		--generate-hashes --universal --python-version 3.11 -o requirements.lock

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
