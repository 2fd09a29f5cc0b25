# PatchMix reproduction suite. Every target runs from the repository root and sets itself up.
# `make help` lists every target and variable (the `##` comments below).
SHELL := /bin/bash
PYTHON ?= python3## the Python that creates .venv
VENV ?= .venv## the virtual environment make builds and uses
PY ?= $(VENV)/bin/python## use an active environment instead of building .venv: make test PY=python
TORCH_INDEX ?=## pip index for torch/torchvision of another CUDA, e.g. https://download.pytorch.org/whl/cu126
STAMPS ?= .make## where make records what it installed into a PY given from outside
STAMP := $(if $(filter $(VENV)/bin/python,$(PY)),$(VENV),$(STAMPS))/.installed-$(shell (echo $(PY) $(TORCH_INDEX); cat requirements.txt requirements-dev.txt) | cksum | cut -d' ' -f1)
PRESET ?= debug_cpu## preset of `make pretrain`
ARGS ?=## extra key=value overrides
OUTPUT_ROOT ?= runs## where run directories go
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist## Debian's Fashion-MNIST files (the demo)
PYTEST_ARGS ?=## extra pytest arguments of `make test`

.PHONY: help setup test test-slurm slurm-up slurm-down demo pretrain knn linear finetune evaluate bench bench-knn fashion-mnist \
	clean report status sweep study tune \
	$(TABLES)

help: ## this list
	@echo "targets:"
	@awk -F':[^#]*## ' '/^[a-z0-9 %$$()A-Z-]+:[^=]*## /{sub(/\$$\(TABLES\)/, "table2..fig5", $$1); printf "  %-22s %s\n", $$1, $$2}' Makefile
	@echo "variables (make TARGET VAR=value):"
	@awk '/^[A-Z_]+ \?=.*## /{split($$0, a, "## "); n = index(a[1], "?="); \
		printf "  %-15s %-36s %s\n", substr(a[1], 1, n - 2), substr(a[1], n + 3), a[2]}' Makefile
	@echo "exit statuses: 0 done, 2 input refused before any work, 3 training diverged, 4 run stopped otherwise"

# Our own .venv: created and filled from the pinned requirements. An environment given as PY (conda,
# another venv): the same pins installed into it, and faiss-cpu only when it has no FAISS at all (a
# faiss-gpu build provides the same module). TORCH_INDEX: torch and torchvision of the same versions
# from another CUDA build first (clusters whose driver is older than the default wheel needs).
$(STAMP): requirements.txt requirements-dev.txt
ifeq ($(PY),$(VENV)/bin/python)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
endif
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) $$(grep -E '^torch(vision)?==' requirements.txt))
	$(PY) -m pip install --quiet -r requirements.txt $$(grep -E '^pytest==' requirements-dev.txt)
	$(PY) -c "import faiss" 2>/dev/null || $(PY) -m pip install --quiet $$(grep -E '^faiss-cpu==' requirements-dev.txt)
	mkdir -p $(dir $@) && rm -f $(dir $@).installed-* && touch $@

setup: $(STAMP) ## install what the suite needs (once per change of the requirements)

test: setup ## the test suite (CI runs it, then test-slurm against a sandbox)
	$(PY) -m pytest $(PYTEST_ARGS)

# A one-node SLURM with accounting on this machine (root, Debian's packages; slurm/sandbox/sandbox.sh):
# partition and account `sandbox`. The tests marked slurm run against it; make test leaves them out.
slurm-up: ## start a one-node SLURM here (root): partition and account `sandbox`
	slurm/sandbox/sandbox.sh up

slurm-down: ## stop what slurm-up started and remove its state
	slurm/sandbox/sandbox.sh down

test-slurm: setup ## the tests marked slurm, against a running SLURM (make slurm-up)
	$(PY) -m pytest -m slurm tests/slurm $(PYTEST_ARGS)

# Fashion-MNIST for the demo: Debian's package when we may install it, else torchvision's download.
fashion-mnist: ## Fashion-MNIST from Debian when possible
	@if [ ! -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; fi

# Debian's files when present (installed by the fashion-mnist target), else a torchvision download.
DEMO_DATA = $$(if [ -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then echo data.root=$(FASHION_MNIST); \
	else echo data.root=data/fashion-mnist data.download=true; fi)

demo: setup fashion-mnist ## small real end-to-end run on CPU (Fashion-MNIST) -> reports/out/demo.md
	$(PY) -m slurm run demo --executor inline --output-root $(OUTPUT_ROOT)/demo --set $(DEMO_DATA) $(ARGS)
	$(PY) -m reports demo --output-root $(OUTPUT_ROOT)/demo --out $(REPORT_DIR)
	@sed -n '/^| Method/,/^$$/p' $(REPORT_DIR)/demo.md | cut -d'|' -f2,6,8
	@echo "demo report: $(REPORT_DIR)/demo.md (with plots)   runs: $(OUTPUT_ROOT)/demo"

# Paper tables and figures: the whole stage graph at once (pretrain -> evaluations, afterok), then
# the report of whatever results exist. EXECUTOR=auto|slurm|local|inline, DRY_RUN=1 lists the jobs.
TABLES := table2 table3 table4 table5 table6 table7 fig4 fig5 ablation-mix-number ablation-loss
EXECUTOR ?= auto## auto | slurm | local | inline
PRESET_FLAVOUR ?= official## official | paper presets of the plans
SEEDS ?=## seeds of a plan, e.g. 0,1,2 (runs: 0; make report: those launched)
DATASET ?=## datasets of a plan, e.g. cifar100
DRY_RUN ?=## 1: list the jobs, run nothing
PROFILE ?=## cluster profile YAML
PARTITION ?=## SLURM partition
ACCOUNT ?=## SLURM account
QOS ?=## SLURM QoS
EVAL_ARGS ?=## overrides of a plan's evaluations
JOBS ?=## inline executor: stages run at a time, each in its own process (make study: 3 at the cpu scale)
REPORT_DIR ?= reports/out## where reports go
PLAN_OPTIONS = --flavour $(PRESET_FLAVOUR) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(DATASET),--datasets $(DATASET))
CLUSTER = $(if $(PARTITION),partition=$(PARTITION)) $(if $(ACCOUNT),account=$(ACCOUNT)) $(if $(QOS),qos=$(QOS))

$(TABLES): setup ## table2..table7, fig4, fig5, ablation-mix-number, ablation-loss: the plan, then its report
	$(PY) -m slurm run $@ --executor $(EXECUTOR) $(PLAN_OPTIONS) --output-root $(OUTPUT_ROOT) \
		$(if $(JOBS),--jobs $(JOBS)) $(if $(DRY_RUN),--dry-run) $(if $(PROFILE),--profile $(PROFILE)) --cluster $(CLUSTER) \
		--set $(ARGS) --eval-set $(EVAL_ARGS)
	$(if $(DRY_RUN),,$(PY) -m reports $@ --output-root $(OUTPUT_ROOT) --out $(REPORT_DIR) $(PLAN_OPTIONS))

report: setup ## markdown + plots from whatever results exist
	$(PY) -m reports --output-root $(OUTPUT_ROOT) --out $(REPORT_DIR) $(PLAN_OPTIONS)

# The Fashion-MNIST study (Table 3 with DINO and SDMP, Tables 5-7 and Figure 4, with seeds and statistics): the cpu scale by
# default (DATASET=fashion_mnist; on 2 cores the whole study took 83 min, 42 pretraining runs three at a time), DATASET=
# fashion_mnist_gpu for the gpu scale. STUDY_PLANS="table3 fig4" runs a part; runs shared between plans are made once.
STUDY_PLANS := table3 table5 table6 table7 fig4
STUDY_SEEDS := 0,1,2
# The cpu scale runs three stages at a time on the inline executor, each loading its images in its own
# process (measured on 2 cores at batch 32, wall seconds per training step over all runs: 0.056 one run
# with a loader worker, 0.050 two at a time without, 0.042 three at a time without); JOBS=1 runs one
# after another, with a loader worker.
STUDY_DATASET = $(or $(DATASET),fashion_mnist)
STUDY_INLINE = $(filter auto inline,$(EXECUTOR))
STUDY_JOBS = $(or $(JOBS),$(if $(filter fashion_mnist,$(STUDY_DATASET)),3,1))
study: setup fashion-mnist ## Tables 3 (PatchMix, MoCo v3, DINO, SDMP), 5-7 and Figure 4 on Fashion-MNIST, SEEDS=0,1,2 -> reports/out/study/
	for plan in $(STUDY_PLANS); do \
		$(PY) -m slurm run $$plan --executor $(if $(filter auto,$(EXECUTOR)),inline,$(EXECUTOR)) \
			$(if $(STUDY_INLINE),--jobs $(STUDY_JOBS)) \
			--datasets $(STUDY_DATASET) --seeds $(if $(SEEDS),$(SEEDS),$(STUDY_SEEDS)) --output-root $(OUTPUT_ROOT)/study \
			--set $(DEMO_DATA) $(if $(STUDY_INLINE),$(if $(filter-out 1,$(STUDY_JOBS)),data.num_workers=0)) $(ARGS) --eval-set $(EVAL_ARGS) || exit $$?; done
	$(PY) -m reports $(STUDY_PLANS) --output-root $(OUTPUT_ROOT)/study --out $(REPORT_DIR)/study \
		--csv $(REPORT_DIR)/study/results.csv
	@echo "study reports: $(REPORT_DIR)/study/*.md (with plots; results.csv has every run)"

# The tuning behind the study's presets (plans/tuning.py): the same number of short trials for PatchMix, MoCo v3,
# DINO and SDMP (8 each, 10 of the 20 epochs at the cpu scale), each ranked by kNN on 2,000 training images held
# out (never the test set), then tuning.csv and tuning.md (each method's chosen point). Seed 0 unless SEEDS=;
# three stages at a time at the cpu scale, as make study (32 minutes on 2 cores, measured: 32 trials and their kNN);
# DRY_RUN=1 lists the trials.
tune: setup fashion-mnist ## each method's hyperparameters by validation kNN, same budget for all -> reports/out/tune/
	$(PY) -m slurm run tune --executor $(if $(filter auto,$(EXECUTOR)),inline,$(EXECUTOR)) \
		$(if $(STUDY_INLINE),--jobs $(STUDY_JOBS)) $(if $(DRY_RUN),--dry-run) \
		--datasets $(STUDY_DATASET) --seeds $(or $(SEEDS),0) --output-root $(OUTPUT_ROOT)/tune \
		$(if $(PROFILE),--profile $(PROFILE)) --cluster $(CLUSTER) \
		--set $(DEMO_DATA) $(if $(STUDY_INLINE),$(if $(filter-out 1,$(STUDY_JOBS)),data.num_workers=0)) $(ARGS) --eval-set $(EVAL_ARGS)
	$(if $(DRY_RUN),,$(PY) -m reports tune --output-root $(OUTPUT_ROOT)/tune --out $(REPORT_DIR)/tune \
		--datasets $(STUDY_DATASET) --seeds $(or $(SEEDS),0))
	$(if $(DRY_RUN),,@echo "tuning: $(REPORT_DIR)/tune/tuning.md and tuning.csv (commit them to docs/results/fashion-mnist/)")

# A sweep: make sweep PRESET=cifar10_vit_s2_800ep_official GRID="loss.temperature=0.1,0.2 mix.num_mixed=2,3" SEEDS=0,1,2
GRID ?=## sweep grid: key=v1,v2 ... (make sweep)
EVALS ?= knn## evaluations of each sweep point, e.g. knn,linear
SWEEP ?=## sweep name (default: preset-key1+key2)
sweep: setup ## PRESET x GRID x SEEDS with EVALS on EXECUTOR, then the grouped report
	@test -n "$(GRID)" || (echo 'usage: make sweep PRESET=... GRID="key=v1,v2 ..." [SEEDS=0,1] [EVALS=knn,linear]' && exit 2)
	$(PY) -m slurm sweep --preset $(PRESET) --grid $(GRID) --evals $(EVALS) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(SWEEP),--name $(SWEEP)) --executor $(EXECUTOR) --output-root $(OUTPUT_ROOT) $(if $(DRY_RUN),--dry-run) \
		$(if $(PROFILE),--profile $(PROFILE)) --cluster $(CLUSTER) --set $(ARGS) --eval-set $(EVAL_ARGS)
	$(if $(DRY_RUN),,$(PY) -m reports sweep $(or $(SWEEP),$$($(PY) -m plans.sweeps $(PRESET) $(GRID))) \
		--output-root $(OUTPUT_ROOT) --out $(REPORT_DIR))

status: setup ## run directories and submitted jobs
	$(PY) -m slurm status --output-root $(OUTPUT_ROOT)

pretrain: setup ## one pretraining run: make pretrain PRESET=... ARGS="..."
	$(PY) -m pretrain --preset $(PRESET) run.output_root=$(OUTPUT_ROOT) $(ARGS)

# Evaluation of a pretraining run: make knn FROM=runs/cifar10_vit_s2_800ep_official-<hash> [EVAL_PRESET=...]
FROM ?=## pretraining run of make knn/linear/finetune
EVAL_PRESET ?=## evaluation preset of make knn/linear/finetune
knn linear finetune: setup ## one evaluation: make knn FROM=<run> [EVAL_PRESET=...]
	@test -n "$(FROM)" || (echo "usage: make $@ FROM=<pretraining run directory> [EVAL_PRESET=...] [ARGS=...]" && exit 2)
	$(PY) -m evaluate $@ --from $(FROM) $(if $(EVAL_PRESET),--preset $(EVAL_PRESET)) $(ARGS)

evaluate: knn linear finetune ## all three evaluations of FROM

# kNN search seconds per backend (JSON): ImageNet size on a GPU, a small size on CPU.
bench-knn: setup ## kNN search seconds per backend (JSON)
	$(PY) -m bench.knn --output $(OUTPUT_ROOT)/bench/knn.json $(ARGS)

# Pretraining step (s/step, img/s, MFU, peak memory, encoder-only bound, kernel profile), input
# pipeline (PIL, GPU colour, device decode, and each stage alone) and kNN, as JSON in runs/bench/.
# On a GPU: the issue's configs (one process each); on a CPU: tiny smoke sizes.
, := ,
HAS_CUDA = $(shell $(PY) -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null)
bench: setup ## step, input pipeline and kNN benchmarks (JSON in runs/bench/)
	$(PY) -m bench.pretrain_step --variants $(if $(filter 1,$(HAS_CUDA)),baseline$(,)batched$(,)compiled,baseline$(,)batched) --profile 3 --output $(OUTPUT_ROOT)/bench/pretrain.json
	$(PY) -m bench.augment --stages $(if $(filter 1,$(HAS_CUDA)),--gpu-compile,--size 64 --batch 32 --batches 4 --source-size 120x90) --output $(OUTPUT_ROOT)/bench/augment.json
	$(PY) -m bench.knn --output $(OUTPUT_ROOT)/bench/knn.json

# Every figure that needs a GPU in one command within 11 minutes of one H200 (bench/gpu_check.py): the
# compiled steps, input pipeline and kNN of `make bench`, pretraining from JPEG files on disk, and Table 6
# on Fashion-MNIST at the gpu scale with its report; one line per figure with its target, JSON in OUT.
SCALE ?= gpu## make gpu-check: gpu (one H200) | tiny (the same code on the CPU in under a minute)
OUT ?= $(OUTPUT_ROOT)/gpu-check## where make gpu-check writes gpu_check.json and the study's report
.PHONY: gpu-check
gpu-check: setup ## speed figures + end to end + GPU-scale Table 6 vs their targets (OUT=folder, SCALE=tiny on CPU)
	$(if $(filter tiny,$(SCALE)),,$(MAKE) --no-print-directory fashion-mnist)
	$(PY) -m bench.gpu_check --scale $(SCALE) --out $(OUT) $(if $(filter tiny,$(SCALE)),,--study-set $(DEMO_DATA)) $(ARGS)

clean: ## remove the demo runs and reports
	rm -rf .pytest_cache $(OUTPUT_ROOT)/demo $(REPORT_DIR)
