# fmi_jax: `make demo` trains and evaluates the default CNN; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/cnn_fmnist.py
WORKDIR ?= runs/cnn_fmnist
PYTEST_ARGS ?=

.PHONY: demo test install data clean-venv help

help:
	@echo "make demo   - venv, install, find Fashion-MNIST, train $(CONFIG) into $(WORKDIR), evaluate"
	@echo "make test   - venv, install test dependencies, run the test suite"
	@echo "make data   - install Debian's dataset-fashion-mnist when running as root with apt"

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Real Fashion-MNIST without a download: Debian ships the original IDX files.
# Elsewhere fmi_jax looks in --config.data.data_dir, $$FMI_DATA_DIR and then tfds.
data:
	@if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
	  echo "Fashion-MNIST: Debian package dataset-fashion-mnist is installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "apt could not install dataset-fashion-mnist; fmi_jax will try \$$FMI_DATA_DIR and tensorflow-datasets"; \
	else \
	  echo "Fashion-MNIST: not root or no apt; fmi_jax will try \$$FMI_DATA_DIR and tensorflow-datasets"; \
	fi

demo: install data
	$(PY) -m experiments.train --config=$(CONFIG) --workdir=$(WORKDIR)
	$(PY) -m experiments.evaluate --workdir=$(WORKDIR)

test: install data
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
