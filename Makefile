# Breakwater: `make run` serves the demo; `make test` runs the suite. Nothing else is needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1
# setuptools warns on every editable install about same-named folders; that is our layout on purpose.
PIP_INSTALL := PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test test-sqlite lint format typecheck imports check bench chaos scale-test clean screenshots

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Breakwater needs Python 3.11+, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.run-stamp: pyproject.toml | $(VENV)/bin/python
	$(PIP_INSTALL) -e .
	@touch $@

$(VENV)/.test-stamp: pyproject.toml | $(VENV)/bin/python
	$(PIP_INSTALL) -e '.[test]'
	@touch $@ $(VENV)/.run-stamp

run: $(VENV)/.run-stamp
	$(PY) manage.py demo

# The whole suite on the configured database, on two workers (pytest-xdist: each worker has its
# own test database and its own Redis database, tests/conftest.py); when that is PostgreSQL, the
# database-behaviour tests (migrations, constraints, apply) run a second time on SQLite.
# PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
test: $(VENV)/.test-stamp
	$(PY) -m pytest -n $(PYTEST_WORKERS)
	@if [ -n "$$DATABASE_URL" ] && [[ "$$DATABASE_URL" != sqlite* ]]; then \
		echo "--- database-behaviour tests again on SQLite"; \
		$(MAKE) --no-print-directory test-sqlite; \
	fi

# The database-behaviour tests alone, on SQLite (the second pass of `make test` on PostgreSQL).
test-sqlite: $(VENV)/.test-stamp
	@DATABASE_URL= $(PY) -m pytest -m dbmatrix -q

lint: $(VENV)/.test-stamp
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.test-stamp
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

typecheck: $(VENV)/.test-stamp
	$(PY) -m mypy .

# The layers and independence contracts in pyproject.toml ([tool.importlinter]).
imports: $(VENV)/.test-stamp
	$(VENV)/bin/lint-imports

check: lint typecheck imports test
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) manage.py check

bench: $(VENV)/.test-stamp
	$(PY) bench/run.py

# Every fault scenario against real processes, then the table of figures; exits non-zero when a
# target is missed (docs/RELIABILITY.md). Needs redis-server (private servers on 6391-6399) and,
# for pg-refusing, PostgreSQL via DATABASE_URL or CHAOS_DATABASE_URL; then the Celery worker
# kill test at 50 trials (the suite runs 12; needs DATABASE_URL on PostgreSQL); about 12 minutes.
# CHAOS_ARGS: e.g. --only poisoned,redis-stall, --quick, --env NAME=VALUE, --keep DIR.
chaos: $(VENV)/.test-stamp
	$(PY) -m bench.chaos $(CHAOS_ARGS)
	BREAKWATER_KILL_TRIALS=50 $(PY) -m pytest -q -p no:cacheprovider \
		tests/agents/executions/test_celery_worker.py -k killed_mid_run

# The production-shaped test (bench/scale, docs/BENCHMARKS.md): 3 serve behind a round-robin,
# 2 Celery workers, beat and the drainer on PostgreSQL (DATABASE_URL or CHAOS_DATABASE_URL: a
# scratch database next to it) and a private redis-server; loadgen at 60 req/s for 3 minutes
# through a primary outage and a SIGKILL of one serve and one worker; about 6 minutes. Exits
# non-zero when an execution is lost or doubled, the ledger and the counters differ, or fewer
# than 99.9% of the outage's requests succeed. SCALE_ARGS: e.g. --quick, --keep DIR.
scale-test: $(VENV)/.test-stamp
	$(PY) -m bench.scale $(SCALE_ARGS)

clean:
	rm -rf $(VENV) var/*.sqlite3* .pytest_cache .mypy_cache .ruff_cache

# The README's console screenshots (docs/screenshots/), re-taken from the demo in headless Chromium,
# after 30 days of seeded history and 4 minutes of live demo traffic with an outage drill (~8 min).
# It runs the demo's upstreams on their fixed ports: stop a running `make run` first.
SCREENSHOT_ARGS ?= --seed-executions 20000 --days 30
screenshots: $(VENV)/.test-stamp
	$(PY) scripts/screenshots.py $(SCREENSHOT_ARGS)

# The console scale benchmark (bench/console.py): page server time at 10K, then 1M seeded
# executions, in the database of DATABASE_URL, whose history it REPLACES (--wipe: executions,
# ledger, incidents, rollups). BENCH_CONSOLE_ARGS: e.g. --n 50, --path /agents/, --out FILE.
.PHONY: bench-console
bench-console: $(VENV)/.test-stamp
	$(PY) bench/console.py --seed 10000 --wipe $(BENCH_CONSOLE_ARGS); a=$$?; \
	$(PY) bench/console.py --seed 1000000 --wipe $(BENCH_CONSOLE_ARGS); b=$$?; \
	exit $$((a | b))
