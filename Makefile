# onecard — the two commands are `make demo` and `make test`. Each does its own set-up
# (Debian packages via apt-get, .venv from requirements.lock) through scripts/bootstrap.sh,
# which is idempotent: a second run with nothing to install takes well under a second.
SHELL := /bin/bash
BIN := .venv/bin

.PHONY: setup test demo bench lint format lock clean fuzz soak

setup:
	@scripts/bootstrap.sh

## test: lint, type-check, then the whole test suite (unit + integration against real daemons)
##       on SQLite, then central's suite again on PostgreSQL (a private cluster; tests that
##       pick their own store ran in the first pass). Three pytest workers: the tests mostly
##       wait on real daemons, so three keep two CPUs busy (about 8 minutes in all)
test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -n 3
	ONECARD_TEST_STORE=postgresql $(BIN)/pytest -n 3 tests/central -m "not store_fixed"

## demo: a branch's day on a real edge, then the whole chain (broker, HQ, two branches)
##       for DURATION seconds (default 15), ending with a check of the books
DURATION ?= 15
demo: setup
	$(BIN)/onecard-sim demo
	$(BIN)/onecard-sim chain --duration $(DURATION)

## bench: every benchmark in bench/; each ends with one `BENCH {json}` line
##        (bench/_*.py are helpers the benchmarks start, not benchmarks)
bench: setup
	@set -e; for script in bench/[!_]*.py; do echo "== $$script"; $(BIN)/python $$script; done

## soak: the chaos harness (docs/RELIABILITY.md): broker, central and edges as processes
##       under load for DURATION seconds (default 600) while faults land (schedule from SEED);
##       ends with a table
soak: DURATION = 600
SEED ?= 2026
soak: setup
	$(BIN)/onecard-sim soak --duration $(DURATION) --seed $(SEED)

## fuzz: every harness in fuzz/ under atheris for FUZZ_SECONDS each (default 60); the corpus
##       in fuzz/corpus/ is read, new inputs go to a scratch folder, crashes to fuzz/artifacts/
FUZZ_SECONDS ?= 60
fuzz: setup
	@mkdir -p fuzz/artifacts; set -e; for harness in frames messages imports; do \
		echo "== fuzz/fuzz_$$harness.py"; work=$$(mktemp -d); \
		$(BIN)/python fuzz/fuzz_$$harness.py $$work fuzz/corpus/$$harness \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			-artifact_prefix=fuzz/artifacts/$$harness- || { rm -rf $$work; exit 1; }; \
		rm -rf $$work; \
	done

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
