# `make demo` and `make test` each create .venv when missing and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
# Most tests wait (retry delays, heartbeats, a server starting): test files run on WORKERS
# processes at once, each with its own databases, Prefect server and simulator, the longest
# modules first (`long` in tests/conftest.py). Three peaked at 66 of PostgreSQL's 100 connections.
WORKERS ?= 3
# The SQLite pass is shorter and busier (few waits): a third worker only made it slower.
SQLITE_WORKERS ?= 2
PARALLEL := --dist loadfile --no-loadscope-reorder

.PHONY: install demo demo-ui ha-demo test test-sqlite test-postgresql test-ha bench clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,ha]"
	touch $(INSTALLED)

install: $(INSTALLED)

demo: install
	bash scripts/demo.sh

demo-ui: install
	DEMO_KEEP=1 bash scripts/demo.sh

ha-demo: install
	$(PY) -m scripts.ha_demo

test: test-sqlite test-postgresql

test-sqlite: install
	TEST_DATABASE=sqlite $(PY) -m pytest -n $(SQLITE_WORKERS) $(PARALLEL) $(PYTEST_ARGS)

test-postgresql: install
	TEST_DATABASE=postgresql TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest -n $(WORKERS) $(PARALLEL) $(PYTEST_ARGS)

test-ha: install
	TEST_DATABASE=postgresql TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest tests/ha -m ha -s $(PYTEST_ARGS)

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .demo *.egg-info
