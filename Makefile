# cpflow: the two commands are `make demo` and `make test`.
# Python 3.12 (Rubin's environment): python3.12 on the PATH, else pyenv's 3.12 when it has one
PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do $$p -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null && { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup tools demo test lint typecheck asyncapi manifests stack-up stack-down clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.12 (python3.12) is required"; exit 1; }
	@test ! -x $(BIN)/python || $(BIN)/python -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null \
	  || { echo "replacing $(VENV): it is not Python 3.12"; rm -rf $(VENV); }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,postgres]"
	@touch $(STAMP)

## setup: virtual environment with cpflow installed, the Kafka jars in the cache, the ops tools, and
## Debian's chromium (the report's browser test) and postgresql (the PostgreSQL registry tests'
## server, started by the tests themselves) when they are missing
setup: $(STAMP) tools
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing Debian's postgresql (the server of the PostgreSQL registry tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium (headless browser of the report test)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		|| echo "warning: could not install chromium; tests/e2e/test_report.py needs it"; }
	$(BIN)/python -c "from cpflow.kafka_local import fetch_jars; print('kafka jars:', fetch_jars())"

## tools: what tests/ops needs besides the venv: promtool (Debian's prometheus package), kustomize
## (kubectl's, else built from its Go module), compose-load (tests/ops/composeload, Go), Grafana's
## TypeScript types and tsc (npm, pinned)
tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus package (promtool, prometheus)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	@command -v kubectl >/dev/null 2>&1 || test -x $(BIN)/kustomize || { \
	  echo "no kubectl: building kustomize v5.5.0"; \
	  GOBIN=$(CURDIR)/$(BIN) go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0; }
	@test -x $(BIN)/compose-load || { \
	  echo "building compose-load (compose-go v2.16.2, the loader of docker compose)"; \
	  cd tests/ops/composeload && go build -o $(CURDIR)/$(BIN)/compose-load .; }
	@test -x monitoring/typecheck/node_modules/.bin/tsc || \
	  npm ci --prefix monitoring/typecheck --no-audit --no-fund --loglevel=error

## demo: start the local stack, run a whole LATISS calibration run (BIAS_DARK_FLAT, defects, PTC) on the simulated camera, print a summary, stop
demo: setup
	$(BIN)/cpflow demo

## test: lint, type-check and the whole test suite (starts and stops its own broker and services);
## two pytest-xdist workers: the end-to-end tests on one, the other modules on the other
test: setup lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## asyncapi: regenerate the AsyncAPI document from the code
asyncapi: $(STAMP)
	$(BIN)/python -m cpflow.asyncapi > asyncapi.yaml

## manifests: regenerate k8s/base/generated/ and monitoring/dashboards/ from the code
manifests: $(STAMP)
	$(BIN)/python -m cpflow.manifests

stack-up: setup
	$(BIN)/cpflow stack up

stack-down: $(STAMP)
	$(BIN)/cpflow stack down

clean:
	-$(BIN)/cpflow stack down
	rm -rf .cpflow
