# The commands of README.md and docs/. Everything the targets need is installed by the targets themselves.
SHELL := /bin/bash
PY ?= python3
STATE := $(CURDIR)/.devstack
VENV := $(STATE)/venv
PYTHON := $(VENV)/bin/python

export PYTHONPATH := $(CURDIR)
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags

.PHONY: venv brokers lint test test-faults test-kafka test-ha test-postgres test-copy test-ui test-standalone test-unit model up down demo bench bench-kafka bench-workers bench-streams status clean

$(VENV)/.installed: requirements.txt requirements-dev.txt providers/event-streams/pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PYTHON) -r requirements-dev.txt
	touch $@

## venv: the project's virtualenv (.devstack/venv) with pinned requirements
venv: $(VENV)/.installed

## lint: ruff (style, imports, likely bugs) over the repository and mypy over include/ and the provider (pyproject.toml)
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## test: lint, Astro's DAG integrity test (astro dev parse) in its own process, then every test in tests/ and providers/
test: venv lint
	rm -rf $(STATE)/test-home && mkdir -p $(STATE)/test-home
	AIRFLOW_HOME=$(STATE)/test-home/astro $(PYTHON) -m pytest -p no:cacheprovider --rootdir=$(CURDIR) .astro/test_dag_integrity_default.py
	AIRFLOW_HOME=$(STATE)/test-home/tests $(PYTHON) -m pytest -p no:cacheprovider --rootdir=$(CURDIR) tests providers/event-streams/tests --ignore=tests/stack/faults --ignore=tests/stack/copy --ignore=tests/stack/ha --ignore=tests/stack/kafka --ignore=tests/stack/ui --ignore=tests/stack/standalone

## test-faults: the fault suite on the real stack (kill -9 the triggerer, broker outage, retries, backlog, ...)
test-faults: venv
	AIRFLOW_HOME=$(STATE)/test-home/faults $(PYTHON) -m pytest -p no:cacheprovider --rootdir=$(CURDIR) tests/stack/faults

## test-kafka: Kafka as production writes it: the trigger-level cases on a real broker (transactions, compaction, a busy
## group, expired offsets, large keys, headers), then through Airflow a second DAG on the topic and a run that fails
## for good between readings of one device (tests/stack/kafka)
test-kafka: venv
	AIRFLOW_HOME=$(STATE)/test-home/kafka $(PYTHON) -m pytest -p no:cacheprovider --rootdir=$(CURDIR) tests/stack/integration/test_brokers_smoke.py tests/stack/kafka

## test-ha: the HA suite on the scale-out profile (PostgreSQL, CeleryExecutor on Redis, 2 schedulers, 2 triggerers,
## 2 workers; needs Debian's postgresql and redis-server): kill -9 of components while messages stream in
test-ha: venv
	DEVSTACK_PROFILE=ha AIRFLOW_HOME=$(STATE)/test-home/ha $(PYTHON) -m pytest -p no:cacheprovider --rootdir=$(CURDIR) tests/stack/ha

## test-postgres: the end-to-end tests again with Airflow on PostgreSQL (as `astro dev start`; needs Debian's postgresql)
test-postgres: venv
	DEVSTACK_DB=postgres AIRFLOW_HOME=$(STATE)/test-home/postgres $(PYTHON) -m pytest -p no:cacheprovider --rootdir=$(CURDIR) tests/stack/e2e

## test-copy: docs/copy-a-pipeline.md done for each pipeline in a fresh Astro scaffold, with its own
## virtualenv: Astro's DAG integrity test there, then the pipeline's end-to-end test on the real stack running it
test-copy: venv
	AIRFLOW_HOME=$(STATE)/test-home/copy $(PYTHON) -m pytest -p no:cacheprovider --rootdir=$(CURDIR) tests/stack/copy

## test-ui: the streams page in headless Chromium on the real stack, signed in (needs Debian's chromium and
## chromium-driver): the figures, a dead letter replayed once from the page, an offset reset shown as drift
test-ui: venv
	AIRFLOW_HOME=$(STATE)/test-home/ui $(PYTHON) -m pytest -p no:cacheprovider --rootdir=$(CURDIR) tests/stack/ui

## test-standalone: `astro dev start --standalone` reproduced on a fresh copy of the project (astro-cli's steps: a uv
## venv with Airflow + requirements.txt only, standalone.env, `airflow standalone`), with the brokers of `make brokers`;
## one message per pipeline through to its effect (tests/stack/standalone)
test-standalone: venv
	AIRFLOW_HOME=$(STATE)/test-home/standalone $(PYTHON) -m pytest -p no:cacheprovider --rootdir=$(CURDIR) tests/stack/standalone

## test-unit: only the logic in include/ and providers/event-streams (no Airflow process, no broker)
test-unit: venv
	$(PYTHON) -m pytest -p no:cacheprovider --rootdir=$(CURDIR) tests/unit providers/event-streams/tests

## model: retrain the packaged failure classifier (deterministic; writes include/inference_execution/models/failure_classifier/v1)
model: venv
	$(PYTHON) -m include.inference_execution.train --version v1

## up: real Kafka + ElasticMQ + Airflow (scheduler, dag-processor, triggerer, api-server), DAGs unpaused; stays up.
## DEVSTACK_PROFILE=ha make up: the scale-out profile instead (2 schedulers, 2 triggerers, 2 Celery workers on a private
## Redis, PostgreSQL; needs Debian's redis-server and postgresql); `make down` stops it like the default one
up: venv
	$(PYTHON) -m devstack.stack up

## brokers: only the brokers, natively: Kafka (KRaft) on 127.0.0.1:9092 and ElasticMQ on 127.0.0.1:9324, with the
## pipelines' topics and queues; for an Airflow started another way (not `make up`). `make down` stops them
brokers: venv
	$(PYTHON) -m devstack.brokers up --cache $(STATE)/cache --data $(STATE)/run

## down: stop everything `make up` / `make demo` started, by PID, whatever state it is in
down:
	@if [ -x $(PYTHON) ]; then $(PYTHON) -m devstack.stack down; else echo "nothing to stop (no venv)"; fi

## demo: `make up`, publish sample events to all three pipelines, wait, print a summary; non-zero if anything is missing
demo: up
	$(PYTHON) -m devstack.demo

## bench: latency and throughput, guide settings vs this project's, per broker and metadata database (prints a table,
## writes bench/results.json); e.g. make bench BENCH_ARGS="--db postgres --settings project --scale 0.2"
BENCH_ARGS ?=
bench: venv
	$(PYTHON) -m devstack.bench $(BENCH_ARGS)

## bench-kafka: the Kafka trigger and commit on a transactional topic (1,000 transactions, every 10th aborted) and a
## compacted one, on a private broker: committed offset vs end per partition, asset events per record, settled rows
BENCH_KAFKA_ARGS ?=
bench-kafka: venv
	$(PYTHON) -m devstack.bench_kafka_topics $(BENCH_KAFKA_ARGS)

## bench-workers: inference replies per second with LocalExecutor and with CeleryExecutor on 2 and 1 workers (HA
## profile; needs Debian's postgresql and redis-server), with the CPU each stage costs; writes bench/workers.json;
## e.g. make bench-workers WORKERS_ARGS="--executors local celery-1 --count 500" (its options are not bench's)
WORKERS_ARGS ?=
bench-workers: venv
	$(PYTHON) -m devstack.bench_workers $(WORKERS_ARGS)

## bench-streams: the streams page's dead-letter reads with 100,000 and 1,000,000 dead letters (SQLite; prints a table)
bench-streams: venv
	$(PYTHON) -m devstack.bench_streams $(BENCH_STREAMS_ARGS)

## status: the stack's processes, then every watcher's figures as the streams page shows them
status: venv
	$(PYTHON) -m devstack.stack status

clean: down
	rm -rf $(STATE)
