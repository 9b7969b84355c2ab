# roadwatch: `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DURATION ?= 60
WORKERS ?= 1

.DEFAULT_GOAL := help

help: ## show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/pip || { rm -rf $(VENV) && $(PY) -m venv $(VENV); } || \
		{ rm -rf $(VENV); echo "no venv (Debian: python3-venv): run 'bash .ci/system-deps.sh' as root"; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)

install: $(STAMP) ## create the venv and install roadwatch with its dev tools
	@bash .ci/system-deps.sh --check || echo "system packages missing: run 'bash .ci/system-deps.sh' (as root)"

run: $(STAMP) ## run broker, Redis, sim VLM, a worker and a producer on 4 simulated cameras (Ctrl-C stops)
	@bash .ci/system-deps.sh --quiet
	$(BIN)/python -m ops.stack run

test: $(STAMP) ## unit and integration tests (installs the system packages they need; starts its own brokers, Redis, sim VLM)
	@bash .ci/system-deps.sh --quiet --with-browser --with-ops-tools --with-rtsp
	$(BIN)/python -m ops.kafka fetch >/dev/null
	$(BIN)/python -m pytest -q -ra

test-unit: $(STAMP) ## unit tests only (no broker)
	$(BIN)/python -m pytest -q -m "not integration"

check: $(STAMP) ## the layer contracts (import-linter), ruff, and mypy --strict on the product packages
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/mypy

lock: $(STAMP) ## re-resolve requirements.lock (every pinned version, extras dev and yolo) from pyproject.toml
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra yolo --python-version 3.11 --custom-compile-command "make lock" -o requirements.lock

bench: $(STAMP) ## benchmarks (~75 min, progress on stdout): results, plots and REPORT.md under bench/results/
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.key_pool
	$(BIN)/python -m bench.quotas
	$(BIN)/python -m bench.capacity
	$(BIN)/python -m bench.ssm
	$(BIN)/pip install -q --no-deps tasi==0.15.4  # the DLR Urban Traffic data it bundles; its own dependencies are not needed
	$(BIN)/python -m bench.dlr_urban
	$(BIN)/python -m bench.detection
	$(BIN)/python -m bench.economy
	$(BIN)/python -m bench.report

up: $(STAMP) ## start the whole stack in the background (logs and PIDs under .state/)
	$(BIN)/python -m ops.stack up --workers $(WORKERS)

down: ## stop what `make up` started (SIGTERM, then SIGKILL)
	@$(BIN)/python -m ops.stack down

status: ## show what runs
	@$(BIN)/python -m ops.stack status

topics: $(STAMP) ## create the topics with partitions and replication (ROADWATCH_TOPIC_* env)
	$(BIN)/python -m ops.stack topics

e2e: $(STAMP) ## run the pipeline DURATION seconds with a live view, then verify exactly-once results
	$(BIN)/python -m ops.stack e2e --duration $(DURATION) --workers $(WORKERS)

kafka-cluster: $(STAMP) ## run a 3-broker KRaft cluster on 127.0.0.1:9092-9094 in the foreground (prints its bootstrap servers)
	$(BIN)/python -m ops.kafka start --port 9092 --size 3 --dir .state/kafka3

verify-keys: $(STAMP) ## check every configured key (ROADWATCH_VLM_KEYS) against ROADWATCH_VLM_BASE_URL
	$(BIN)/python -m ops.verify_keys

broker: $(STAMP) ## run one Kafka broker on 127.0.0.1:9092 in the foreground
	$(BIN)/python -m ops.kafka start --port 9092

worker: $(STAMP) ## run one Faust worker against ROADWATCH_KAFKA_URL
	$(BIN)/python -m streams worker -l info

producer: $(STAMP) ## run the detection producer on deploy/cameras.sim.yaml
	$(BIN)/python -m models.producer --cameras deploy/cameras.sim.yaml --detector motion

vlm: $(STAMP) ## run the simulated VLM on 127.0.0.1:8089
	$(BIN)/python -m sim.vlm --port 8089

dashboard: ## print the dashboard URL
	@echo "dashboard: http://127.0.0.1:$${ROADWATCH_WEB_PORT:-6066}/"

clean: ## remove state, caches and the venv
	rm -rf .state .mypy_cache .ruff_cache .pytest_cache $(VENV) *.egg-info

.PHONY: help install run test test-unit check lock bench up down status topics e2e kafka-cluster verify-keys broker worker producer vlm dashboard clean
