# PatchMix reproduction suite. Every target runs from the repository root and sets itself up.
#   make demo      small real end-to-end run on CPU (Fashion-MNIST)
#   make test      the test suite
#   make pretrain PRESET=cifar10_vit_s2_800ep_official ARGS="data.root=/datasets/cifar"
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
PRESET ?= debug_cpu
ARGS ?=
OUTPUT_ROOT ?= runs
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=

.PHONY: help setup test demo pretrain knn linear finetune evaluate bench-knn fashion-mnist clean

help:
	@sed -n '2,4p' Makefile

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Fashion-MNIST for the demo: Debian's package when we may install it, else torchvision's download.
fashion-mnist:
	@if [ ! -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; fi

# Debian's files when present (installed by the fashion-mnist target), else a torchvision download.
DEMO_DATA = $$(if [ -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then echo data.root=$(FASHION_MNIST); \
	else echo data.root=data/fashion-mnist data.download=true; fi)

demo: setup fashion-mnist
	$(PY) -m pretrain --preset demo_fashion_mnist_m2 run.output_root=$(OUTPUT_ROOT)/demo $(DEMO_DATA) $(ARGS)

pretrain: setup
	$(PY) -m pretrain --preset $(PRESET) run.output_root=$(OUTPUT_ROOT) $(ARGS)

# Evaluation of a pretraining run: make knn FROM=runs/cifar10_vit_s2_800ep_official-<hash> [EVAL_PRESET=...]
FROM ?=
EVAL_PRESET ?=
knn linear finetune: setup
	@test -n "$(FROM)" || (echo "usage: make $@ FROM=<pretraining run directory> [EVAL_PRESET=...] [ARGS=...]" && exit 2)
	$(PY) -m evaluate $@ --from $(FROM) $(if $(EVAL_PRESET),--preset $(EVAL_PRESET)) $(ARGS)

evaluate: knn linear finetune

# kNN search seconds per backend (JSON): ImageNet size on a GPU, a small size on CPU.
bench-knn: setup
	$(PY) -m evaluate.bench --output $(OUTPUT_ROOT)/bench/knn.json $(ARGS)

clean:
	rm -rf .pytest_cache $(OUTPUT_ROOT)/demo reports/out
