# Entry points; each sets up what it needs first (scripts/setup.sh is idempotent).
PY := .venv/bin/python

.PHONY: setup smoke test test-fast bench clean

setup:
	@bash scripts/setup.sh

## Run the offline smoke sweep: database in results/smoke.db, report in results/smoke/report/
smoke: setup
	$(PY) -m sweep_service run configs/smoke.yaml

## Lint, then run the whole test suite, slow end-to-end tests (Docker, browser) included
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

## Lint and the tests without the slow end-to-end ones
test-fast: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow"

## Throughput benchmark against a plain sequential script (method: benchmarks/README.md)
bench: setup
	$(PY) benchmarks/sweep_throughput.py

clean:
	rm -rf results artifacts .pytest_cache
