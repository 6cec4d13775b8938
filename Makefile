# cpflow: the two commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck asyncapi stack-up stack-down clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 ($(PYTHON)) is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $(STAMP)

## setup: virtual environment with cpflow installed, the Kafka jars in the cache, and Debian's chromium
## (the report's browser test) when it is missing
setup: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium (headless browser of the report test)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		|| echo "warning: could not install chromium; tests/e2e/test_report.py needs it"; }
	$(BIN)/python -c "from cpflow.kafka_local import fetch_jars; print('kafka jars:', fetch_jars())"

## demo: start the local stack, run a whole LATISS calibration run (BIAS_DARK_FLAT, defects, PTC) on the simulated camera, print a summary, stop
demo: setup
	$(BIN)/cpflow demo

## test: lint, type-check and the whole test suite (starts and stops its own broker and services)
test: setup lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## asyncapi: regenerate the AsyncAPI document from the code
asyncapi: $(STAMP)
	$(BIN)/python -m cpflow.asyncapi > asyncapi.yaml

stack-up: setup
	$(BIN)/cpflow stack up

stack-down: $(STAMP)
	$(BIN)/cpflow stack down

clean:
	-$(BIN)/cpflow stack down
	rm -rf .cpflow
