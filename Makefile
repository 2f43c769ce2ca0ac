# `make demo` and `make test` each create or update the environment in .venv/ first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed

.PHONY: demo demo-cloud demo-alert demo-gate test bench bench-whole-run bench-three-ways bench-slack venv lock validate clean-demo up down

demo: $(STAMP)
	$(BIN)/python -m mlbatch.local.demo

# The demo pipeline with input, marker, work folder, output and dead letters on the GCS emulator
# (backend dataflow) and on moto S3 (backend local), both started and stopped here
# (docs/production-path.md).
demo-cloud: $(STAMP)
	$(BIN)/python -m mlbatch.local.demo.cloud

# A deliberately failing pipeline; prints its Slack alert as text (local outbox unless a token is set).
demo-alert: $(STAMP)
	$(BIN)/python -m mlbatch.local.demo.alert

# Three normal days, then one with a shifted feature: prints the quality gate's Slack message as text
# (what drifted, chart, Approve / Reject); local outbox unless a token is set (docs/quality.md, "The gate").
demo-gate: $(STAMP)
	$(BIN)/python -m mlbatch.local.demo.gate

test: $(STAMP)
	$(BIN)/python -m pytest tests

# Time every way of scoring the same data with the same model (bench/results.md, bench/results.png),
# then the whole natality_daily DAG run against the raw limit of the same work (bench/whole_run.py).
# Data and models are generated once into .bench/ and reused. Then the Slack acknowledgement benchmark,
# then seed 004's three ways (bench/three_ways.py).
bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/slack_ack.py
	$(BIN)/python bench/three_ways.py

# Only the whole-run section of bench/results.md (e.g. SIZES=1k,1m for a quicker look).
bench-whole-run: $(STAMP)
	$(BIN)/python bench/whole_run.py $(if $(SIZES),--sizes $(SIZES))

# Seed 004's three ways on natality 10K/100K/1M rows, end to end (~10 min): direct model, prep + batch
# prediction (SageMaker transform emulator, real scoring server), live endpoint with a micro-batch sweep.
# Its section of bench/results.md, README's Measured line and the line `three-ways: direct <A>x faster ...`.
bench-three-ways: $(STAMP)
	$(BIN)/python bench/three_ways.py $(if $(SIZES),--sizes $(SIZES))

# 100 concurrent signed /mlops commands against the live API server of `make up`'s stack (~3 min): its
# section of bench/results.md and the line `slack-ack: p99 <P> ms at 100 concurrent, <N> over 3 s`.
# DB=<SQLAlchemy URL> or DB=sqlite; default: PostgreSQL on 127.0.0.1:5432 when it answers, else SQLite.
bench-slack: $(STAMP)
	$(BIN)/python bench/slack_ack.py $(if $(DB),--db $(DB))

venv: $(STAMP)

# --compile-bytecode: uv writes no .pyc files by default, and where PYTHONDONTWRITEBYTECODE is set (or
# site-packages is read-only) every process would compile Airflow, MLflow and Beam from source again:
# about twice the import CPU of each task and job process (bench/results.md, whole run).
$(STAMP): requirements.txt operators/pyproject.toml include/beam_jobs/setup.py include/beam_jobs/worker-requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python requirements.txt
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --no-deps -e operators -e include/beam_jobs
	touch $(STAMP)

# Re-resolve requirements.txt from the short top-level list in requirements.in.
lock: $(STAMP)
	$(BIN)/uv pip compile requirements.in --python-version 3.11 -o requirements.txt

# The deployment topology as plain processes (api-server, scheduler, dag-processor, triggerer, MLflow,
# alert flusher) under a supervisor of ours that restarts what dies (.mlbatch-up/logs/supervisor.log);
# SQLite + LocalExecutor unless DB=<SQLAlchemy URL> (e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/airflow).
# On a running or half-running stack `make up` starts only what is missing. `make down` returns once no
# process of the stack is left (task processes and their job processes included).
up: $(STAMP)
	$(BIN)/python -m mlbatch.local.stack up $(if $(DB),--db $(DB))

down:
	$(BIN)/python -m mlbatch.local.stack down

validate: $(STAMP)
	$(BIN)/mlbatch validate include/pipelines/*.yaml

clean-demo:
	rm -rf .demo
