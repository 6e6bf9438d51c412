# Everyday commands. Every target uses the virtual environment $(VENV) (default .venv) and
# (re)installs the project into it whenever pyproject.toml changed, so `make run` and
# `make test` work from a fresh clone with nothing but python3.
#
#   make run        the whole service on SQLite + embedded Redis (Ctrl-C stops it)
#   make test       unit + integration tests (starts PostgreSQL and Redis if they are down)
#
# CI uses another environment: `make test VENV=.ci-venv`.

VENV ?= .venv
PYTHON ?= python3
# Flower listens on loopback unless told otherwise: it shows every task's arguments and can
# revoke tasks. `make flower FLOWER_PORT=5556 FLOWER_ADDRESS=0.0.0.0` (then enable its auth).
FLOWER_PORT ?= 5555
FLOWER_ADDRESS ?= 127.0.0.1
# Tasks by name, queue (routing key), argument (ids, never a token) and worker, times relative;
# the same options as the compose service.
FLOWER_OPTIONS ?= --natural_time --tasks_columns=name,state,routing_key,args,received,started,runtime,worker,retries --purge_offline_workers=600
# `make simulate` drives a simulated fleet against the service `make run` started (another terminal).
SUPERVISORS ?= 200
DURATION ?= 60
CRASH_RATE ?= 2
# bench/monitor.py's size and producer (its defaults are the issue's: 1,000 subscribers, 60 s,
# the fleet simulator), e.g. `make bench-monitor MONITOR_BENCH="--subscribers 300 --seconds 20"`.
MONITOR_BENCH ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.makima-installed

.DEFAULT_GOAL := help
.PHONY: help install run test test-unit test-integration bench bench-monitor lint format typecheck flower simulate services clean

help:
	@echo "make install      create $(VENV) and install the project (make run does it too; about 2 minutes the first time)"
	@echo "make run          run the API, a worker, a heartbeat worker, a batch worker and beat (embedded by default)"
	@echo "make test         all tests (ensures PostgreSQL and Redis are running)"
	@echo "make test-unit    unit tests only (no services needed)"
	@echo "make bench        run every benchmark in bench/"
	@echo "make bench-monitor  the live monitor under load only (MONITOR_BENCH=\"--subscribers N --seconds S\")"
	@echo "make lint         ruff check + ruff format --check"
	@echo "make typecheck    mypy --strict"
	@echo "make flower       Flower on http://$(FLOWER_ADDRESS):$(FLOWER_PORT) (FLOWER_PORT=, FLOWER_ADDRESS=)"
	@echo "make simulate     $(SUPERVISORS) simulated supervisors for $(DURATION) s against 'make run' (SUPERVISORS=, DURATION=, CRASH_RATE=)"
	@echo "VENV=$(VENV)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project definition changed (the stamp is older than pyproject.toml).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(STAMP)

services:
	scripts/ensure-services.sh

run: $(STAMP)
	$(BIN)/makima run

test: $(STAMP) services
	$(BIN)/pytest -q tests

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test-integration: $(STAMP) services
	$(BIN)/pytest -q tests/integration

bench: $(STAMP) services
	@set -e; found=0; for f in bench/*.py; do \
		case "$$(basename $$f)" in _*) continue;; esac; \
		found=1; echo "== $$f"; \
		if [ "$$(basename $$f)" = monitor.py ]; then $(BIN)/python $$f $(MONITOR_BENCH); \
		else $(BIN)/python $$f; fi; \
	done; [ $$found = 1 ] || echo "no benchmarks in bench/"

bench-monitor: $(STAMP) services
	$(BIN)/python bench/monitor.py $(MONITOR_BENCH)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

flower: $(STAMP)
	$(BIN)/celery -A workers.celery_app flower --address=$(FLOWER_ADDRESS) --port=$(FLOWER_PORT) $(FLOWER_OPTIONS)

simulate: $(STAMP)
	$(BIN)/makima simulate --supervisors $(SUPERVISORS) --duration $(DURATION) --crash-rate $(CRASH_RATE)

clean:
	rm -rf .makima .mypy_cache .ruff_cache .pytest_cache *.egg-info
