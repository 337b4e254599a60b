# tunefleet: every target does its own setup on a fresh machine (Python 3.11, x86_64).
#   make demo   fine-tune real pretrained models on real data, through the service, offline
#   make test   lint (ruff, import contracts), stale-proto check and the full test suite
#   make proto  regenerate the committed Python bindings from proto/
#   make bench  benchmarks (ratios against baselines measured in the same run)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunefleet-installed

.PHONY: setup demo test lint proto bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[worker,dev,demo]"
	@touch $(STAMP)

setup: $(STAMP)

FMNIST := /usr/share/datasets/fashion-mnist

$(FMNIST):
	@echo "Fashion-MNIST comes from the Debian package dataset-fashion-mnist; installing it"
	apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist

# tests/dashboard drive the web dashboard in Debian's headless Chromium (skipped without it).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@echo "the dashboard's browser tests use the Debian package chromium; installing it"
	apt-get update -qq && apt-get install -y -qq chromium

demo: setup $(FMNIST)
	HF_HUB_OFFLINE=1 $(PY) examples/demo.py

lint: setup
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

test: setup lint $(CHROMIUM)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

proto: setup
	PYTHON=$(PY) proto/gen.sh

# Each CPU bench takes under 3 minutes on 2 idle cores (quality_vs_trainer: about 40); gpu_mfu prints "skipped: no GPU"
# without CUDA. Their docstrings give the options (e.g. frozen_features' full-size case).
bench: setup
	HF_HUB_OFFLINE=1 $(PY) bench/quality_vs_trainer.py
	HF_HUB_OFFLINE=1 $(PY) bench/engine_vs_trainer.py
	HF_HUB_OFFLINE=1 $(PY) bench/frozen_features.py $(FROZEN_FEATURES_ARGS)
	HF_HUB_OFFLINE=1 $(PY) bench/service_overhead.py
	HF_HUB_OFFLINE=1 $(PY) bench/structured_pruning.py
	$(PY) bench/scheduler.py
	$(PY) bench/events.py
	$(PY) bench/gpu_mfu.py

clean:
	rm -rf .tunefleet demo-runs .pytest_cache
