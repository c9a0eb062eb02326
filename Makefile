# resweep: `make demo` runs the main job, `make test` the tests. Both bootstrap by
# themselves: a .venv with the pinned packages (skipped while a stamp keyed by the
# requirements is current) and the Fashion-MNIST data.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REQ_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
# `make test` adds what a Ray cluster node has beyond ray[tune] (the dashboard and job
# server `ray job submit` talks to): the image's set, docker/requirements-cluster.txt.
TEST_REQ := docker/requirements-cluster.txt
TEST_STAMP := $(VENV)/.installed-test-$(shell cat requirements.txt pyproject.toml $(TEST_REQ) | sha256sum | cut -c1-16)
STUDY ?= search_spaces/degradation-quick.yaml
PYTEST_ARGS ?=
# `make readme-results`: the demo study, run in a fresh store of its own (never ./mlflow.db).
README_STUDY := search_spaces/degradation-quick.yaml
README_RUN := $(CURDIR)/build/readme-results

.PHONY: help setup test-setup data test demo readme-results cluster-test clean

help:
	@echo "make demo   run the default study (local Ray + MLflow) and write its report"
	@echo "make test   run the test suite"
	@echo "make readme-results  rerun the demo study in a fresh store (build/readme-results)"
	@echo "            and rewrite the README's demo table, its figure and the study's comment"
	@echo "make cluster-test  build the compose stack's images offline, bring it up and run a"
	@echo "            study through it (root; Docker installed and started if needed)"
	@echo "make setup  create $(VENV) with the pinned packages (done by demo/test)"
	@echo "make test-setup  add the Ray cluster node extras the tests need (done by test)"
	@echo "make data   make sure Fashion-MNIST is on disk (done by demo/test)"
	@echo "make clean  remove the venv, local MLflow store, Ray results and reports"

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@echo "== installing pinned packages into $(VENV) (a few minutes, once)"
	@# A venv without pip (e.g. made before python3-venv was installed) is completed in place.
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.installed-*
	@$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@set -o pipefail; $(BIN)/python -m pip install -q -r requirements.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
	@$(BIN)/python -m pip install -q --no-deps -e . > $(VENV)/install-project.log 2>&1 || { cat $(VENV)/install-project.log; exit 1; }
	@touch $@

test-setup: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP) $(TEST_REQ)
	@echo "== installing the Ray cluster node's extras for the tests ($(TEST_REQ))"
	@rm -f $(VENV)/.installed-test-*
	@set -o pipefail; $(BIN)/python -m pip install -q -r $(TEST_REQ) 2>&1 | { grep -v "^WARNING: Location" || true; }
	@touch $@

data: setup
	@$(BIN)/python -m workers.data.files fashion-mnist

test: setup test-setup data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup data
	$(BIN)/resweep run $(STUDY)
	$(BIN)/resweep report $(STUDY)

# Local Ray (RAY_ADDRESS unset) and a fresh SQLite store; the README's numbers, the
# figure in analysis/example/ and the study file's comment come from that store only.
readme-results: setup data
	rm -rf $(README_RUN) && mkdir -p $(README_RUN)
	cd $(README_RUN) && env -u RAY_ADDRESS -u MLFLOW_TRACKING_URI $(abspath $(BIN))/resweep \
	    run $(CURDIR)/$(README_STUDY) -q --tracking-uri sqlite:///$(README_RUN)/mlflow.db \
	    --storage $(README_RUN)/ray_results
	$(BIN)/python -m analysis.readme_results --study $(README_STUDY) \
	    --tracking-uri sqlite:///$(README_RUN)/mlflow.db --out $(README_RUN)/report

# The compose stack really up (tests/stack/compose_stack.py): dockerd, a Debian base, a
# wheelhouse, every image, a study through the compose file's submit service, a worker
# killed mid-study, down/up. Not part of `make test` (minutes, root, several GB of images).
cluster-test:
	$(BIN)/python tests/stack/compose_stack.py $(CLUSTER_TEST_ARGS)

clean:
	rm -rf $(VENV) mlflow.db mlartifacts ray_results reports build/readme-results
