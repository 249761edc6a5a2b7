# The front door: `make demo` and `make test` set everything up on a fresh machine.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
DATA    ?= ../shared/data
INPUT   ?= $(if $(wildcard $(DATA)/fraudTest.csv.gz),$(DATA)/fraudTest.csv.gz,examples/fraud/sample.csv.gz)
SPEC    := examples/fraud/spec.py
ADAPTER := examples/fraud/sparkov.py
OUT     ?= out
EXAMPLE ?= fraud

.PHONY: venv test test-fast test-kafka demo replay lint fmt bench bench-scale bench-restore bench-replay bench-smoke kafka-up kafka-down clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Everything that needs no broker, the property tests with a quarter of their examples: about a minute.
test-fast: $(STAMP)
	SUPERNOVA_TEST_FAST=1 $(PY) -m pytest -q -m "not kafka"

# Only the tests on the real broker (the suite starts its own).
test-kafka: $(STAMP)
	$(PY) -m pytest -q -m kafka

# EXAMPLE=shop: generated signups, logins and orders, two scored types.
demo: $(STAMP)
	$(PY) scripts/demo.py --example $(EXAMPLE) $(if $(filter fraud,$(EXAMPLE)),--input $(INPUT))

replay: $(STAMP)
	$(VENV)/bin/supernova replay --spec $(SPEC) --input $(INPUT) --adapter $(ADAPTER) --features-out $(OUT)/features.parquet

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m bench --input $(INPUT)

# Populations of 1×, 8×, 64× the cards of a fraudTest slice and a thin one of 1,000,000 cards (bench/scale.py).
bench-scale: $(STAMP)
	$(PY) -m bench.scale --input $(INPUT)

# Restore MB/s of one filled changelog, main's code against this checkout's (bench/restore.py).
bench-restore: $(STAMP)
	$(PY) -m bench.restore --input $(INPUT) --worker

bench-replay: $(STAMP)
	$(PY) bench/replay.py --input $(INPUT)

bench-smoke: $(STAMP)
	$(PY) -m bench --smoke

kafka-up:
	scripts/kafka start

kafka-down:
	scripts/kafka stop

clean:
	rm -rf $(OUT) .kafka
