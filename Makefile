# fmi_jax: `make demo` trains the default CNN briefly and explains its decisions;
# `make test` runs the tests; `make train` is the full 20-epoch reproduction.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/cnn_fmnist.py
WORKDIR ?= runs/cnn_fmnist
# The demo: a short schedule of the same config in its own run folder (a cosine
# schedule of another length is another run, so `make train` starts its own).
DEMO_WORKDIR ?= runs/demo
DEMO_EPOCHS ?= 3
PYTEST_ARGS ?=
# Test processes (pytest-xdist): XLA compiles on one thread, so two workers use both
# cores of a 2-core machine; `TEST_WORKERS=0` runs in this process (for pdb).
TEST_WORKERS ?= auto
TEST_MAX_WORKERS ?= 4
# JAX's persistent compilation cache: identical programs compiled by the two workers,
# by subprocesses and by repeated runs of a study are compiled once, and a second
# `make test` loads most of what the first compiled. `JAX_CACHE=` turns it off. Nothing is
# evicted (JAX's size cap rescans the folder on every write): `rm -rf .cache` clears it.
JAX_CACHE ?= .cache/jax
TEST_ENV := $(if $(JAX_CACHE),JAX_COMPILATION_CACHE_DIR=$(abspath $(JAX_CACHE)) \
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0)
# Exact versions of everything installed (see constraints.txt); `CONSTRAINTS=` drops them.
CONSTRAINTS ?= constraints.txt
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# The benchmark's PyTorch side lives in its own venv, never in the test or demo one.
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU-only wheel
TORCH_INDEX ?=
BENCH_CONFIG ?= configs/benchmark.py
BENCH_WORKDIR ?= runs/benchmark/$(shell uname -m)-$(shell nproc)cores

SAE_WORKDIR ?= runs/sae_fmnist

.PHONY: demo train test install data bench explain tcav sae gpu-check gpu-data clean-venv help

help:
	@echo "make demo   - venv, install, find Fashion-MNIST, train $(CONFIG) for $(DEMO_EPOCHS) epochs into $(DEMO_WORKDIR), evaluate, explain (prints the report's path)"
	@echo "make train  - the full run of $(CONFIG) into $(WORKDIR), then evaluate"
	@echo "make test   - venv, install test dependencies, run the test suite"
	@echo "make data   - install Debian's dataset-fashion-mnist when running as root with apt"
	@echo "make explain - the explain study on $(WORKDIR) (after make train)"
	@echo "make tcav   - the TCAV study (every class against every class as a concept) on $(WORKDIR) (after make train)"
	@echo "make sae    - the k-sparse autoencoder study into $(SAE_WORKDIR)"
	@echo "make bench  - fmi_jax vs PyTorch + Captum / grad-cam on $(WORKDIR), in its own venv $(BENCH_VENV)"
	@echo "make gpu-check - on a GPU machine: tests, benchmark, tuning goals, studies (GPU_CHECK_SMOKE=1 rehearses)"
	@echo "make gpu-data - Fashion-MNIST and the wheels gpu-check may install, in .gpu_data/ for a GPU machine without internet"
	@echo "make clean-venv - remove $(VENV) and $(BENCH_VENV), so the next install resolves afresh"

$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_CONSTRAINTS) -e '.[test]'
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
	$(PY) -m experiments.train --config=$(CONFIG) --workdir=$(DEMO_WORKDIR) \
	  --config.num_epochs=$(DEMO_EPOCHS)
	$(PY) -m experiments.evaluate --workdir=$(DEMO_WORKDIR)
	$(PY) -m experiments.explain --workdir=$(DEMO_WORKDIR) --config=configs/explain.py

train: install data
	$(PY) -m experiments.train --config=$(CONFIG) --workdir=$(WORKDIR)
	$(PY) -m experiments.evaluate --workdir=$(WORKDIR)

test: install data
	$(TEST_ENV) $(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --maxprocesses=$(TEST_MAX_WORKERS)) $(PYTEST_ARGS)

explain: install
	$(PY) -m experiments.explain --workdir=$(WORKDIR) --config=configs/explain.py

tcav: install data
	$(PY) -m experiments.tcav --workdir=$(WORKDIR) --config=configs/tcav.py

sae: install data
	$(PY) -m experiments.sae_study --config=configs/sae_fmnist.py --workdir=$(SAE_WORKDIR)

# grad-cam (Score-CAM's reference) goes in without its declared dependencies: they name
# an unpinned torchvision, which would pull another torch (a CUDA build). What
# `import pytorch_grad_cam` needs besides torch comes with '.[bench]' (ttach,
# opencv-python-headless, scikit-learn) and with fmi_jax (numpy, scipy, matplotlib,
# tqdm, pillow); without a torchvision that loads, fmi_jax/benchmark/torch_side.py
# imports it against stubs (ScoreCAM never calls torchvision).
$(BENCH_VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip
	$(BENCH_PY) -m pip install --quiet $(PIP_CONSTRAINTS) torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BENCH_PY) -m pip install --quiet $(PIP_CONSTRAINTS) -e '.[bench]'
	$(BENCH_PY) -m pip install --quiet $(PIP_CONSTRAINTS) --no-deps grad-cam==1.5.7
	touch $@

bench: $(BENCH_VENV)/.installed data
	$(BENCH_PY) -m experiments.benchmark --config=$(BENCH_CONFIG) \
	  --config.model_workdir=$(WORKDIR) --workdir=$(BENCH_WORKDIR)

# On the GPU machine, with its preinstalled CUDA jax and PyTorch (no venv: the script
# installs only what is missing). GPU_CHECK_ARGS passes more, e.g. --data_dir=.gpu_data.
GPU_CHECK_SMOKE ?=
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) scripts/gpu_check.py $(if $(GPU_CHECK_SMOKE),--smoke) $(GPU_CHECK_ARGS)

# For a GPU machine without internet: Debian's Fashion-MNIST files and the pure-Python
# wheels the script may need to install, in .gpu_data/ (ignored by git, ~32 MB) to carry
# there; then GPU_CHECK_ARGS=--data_dir=.gpu_data.
gpu-data: data $(VENV)/.installed
	mkdir -p .gpu_data/fashion_mnist
	cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .gpu_data/fashion_mnist/
	$(PY) scripts/gpu_check.py --save_wheels=.gpu_data/wheels

clean-venv:
	rm -rf $(VENV) $(BENCH_VENV)
