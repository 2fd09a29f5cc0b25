# PatchMix reproduction suite. Every target runs from the repository root and sets itself up.
#   make demo      small real end-to-end run on CPU (Fashion-MNIST) -> reports/out/demo.md
#   make test      the test suite
#   make table2 EXECUTOR=slurm PARTITION=gpu [DRY_RUN=1]    every paper table / figure: table2..table7, fig4, fig5
#   make ablation-mix-number DATASET=cifar100                (= table6; ablation-loss = table7)
#   make report    markdown + plots from whatever results exist;  make status: runs and queued jobs
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

.PHONY: help setup test demo pretrain knn linear finetune evaluate bench bench-knn fashion-mnist clean report status \
	$(TABLES)

help:
	@sed -n '2,7p' Makefile

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
	$(PY) -m slurm run demo --executor inline --output-root $(OUTPUT_ROOT)/demo --set $(DEMO_DATA) $(ARGS)
	$(PY) -m reports demo --output-root $(OUTPUT_ROOT)/demo --out $(REPORT_DIR)
	@sed -n '/^| Method/,/^$$/p' $(REPORT_DIR)/demo.md | cut -d'|' -f2,6,8
	@echo "demo report: $(REPORT_DIR)/demo.md (with plots)   runs: $(OUTPUT_ROOT)/demo"

# Paper tables and figures: the whole stage graph at once (pretrain -> evaluations, afterok), then
# the report of whatever results exist. EXECUTOR=auto|slurm|local|inline, DRY_RUN=1 lists the jobs.
TABLES := table2 table3 table4 table5 table6 table7 fig4 fig5 ablation-mix-number ablation-loss
EXECUTOR ?= auto
PRESET_FLAVOUR ?= official
SEEDS ?= 0
DATASET ?=
DRY_RUN ?=
PROFILE ?=
PARTITION ?=
ACCOUNT ?=
QOS ?=
EVAL_ARGS ?=
REPORT_DIR ?= reports/out
PLAN_OPTIONS = --flavour $(PRESET_FLAVOUR) --seeds $(SEEDS) $(if $(DATASET),--datasets $(DATASET))
CLUSTER = $(if $(PARTITION),partition=$(PARTITION)) $(if $(ACCOUNT),account=$(ACCOUNT)) $(if $(QOS),qos=$(QOS))

$(TABLES): setup
	$(PY) -m slurm run $@ --executor $(EXECUTOR) $(PLAN_OPTIONS) --output-root $(OUTPUT_ROOT) \
		$(if $(DRY_RUN),--dry-run) $(if $(PROFILE),--profile $(PROFILE)) --cluster $(CLUSTER) \
		--set $(ARGS) --eval-set $(EVAL_ARGS)
	$(if $(DRY_RUN),,$(PY) -m reports $@ --output-root $(OUTPUT_ROOT) --out $(REPORT_DIR) $(PLAN_OPTIONS))

report: setup
	$(PY) -m reports --output-root $(OUTPUT_ROOT) --out $(REPORT_DIR) $(PLAN_OPTIONS)

status: setup
	$(PY) -m slurm status --output-root $(OUTPUT_ROOT)

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
	$(PY) -m bench.knn --output $(OUTPUT_ROOT)/bench/knn.json $(ARGS)

# Pretraining step (s/step, img/s, MFU, peak memory, encoder-only bound, kernel profile), input
# pipeline (PIL, GPU colour, device decode, and each stage alone) and kNN, as JSON in runs/bench/.
# On a GPU: the issue's configs (one process each); on a CPU: tiny smoke sizes.
, := ,
HAS_CUDA = $(shell $(PY) -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null)
bench: setup
	$(PY) -m bench.pretrain_step --variants $(if $(filter 1,$(HAS_CUDA)),baseline$(,)batched$(,)compiled,baseline$(,)batched) --profile 3 --output $(OUTPUT_ROOT)/bench/pretrain.json
	$(PY) -m bench.augment --stages $(if $(filter 1,$(HAS_CUDA)),--gpu-compile,--size 64 --batch 32 --batches 4 --source-size 120x90) --output $(OUTPUT_ROOT)/bench/augment.json
	$(PY) -m bench.knn --output $(OUTPUT_ROOT)/bench/knn.json

clean:
	rm -rf .pytest_cache $(OUTPUT_ROOT)/demo $(REPORT_DIR)
