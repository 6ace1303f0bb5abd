# qbench -- every target installs what it needs first.
#
# TORCH is the torch requirement handed to pip. The default resolves to the normal wheel for
# your platform; on a CPU-only machine that holds a local CPU build, pin it, e.g.
#   make test TORCH=torch==2.13.0
PYTHON   ?= python3
VENV     ?= .venv
TORCH    ?= torch>=2.1,<3
DATASET  ?= digits
JOBS     ?= 2
METHOD   ?= ssm
BITS     ?= 32
BIN      := $(VENV)/bin
QBENCH   := $(BIN)/qbench
STAMP    := $(VENV)/.qbench-installed

.PHONY: install run test lint reproduce-tables bench dataset-data clean

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

test: lint
	$(BIN)/python -m pytest

## Grid of every method x 12/24/32/48 bits x 3 seeds on DATASET, then tables and plots of
## every grid run so far (all datasets) into results/tables and results/plots.
reproduce-tables: install dataset-data
	$(QBENCH) grid grids/default.json --dataset $(DATASET) --jobs $(JOBS) --out results/grid/$(DATASET)
	$(QBENCH) compare results/grid/*/ --format md --out results

## Fashion-MNIST comes from Debian's dataset-fashion-mnist package when it is missing.
dataset-data:
ifeq ($(DATASET),fashion-mnist)
	test -d /usr/share/datasets/fashion-mnist || \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)
endif

## Benchmarks: figures written to results/bench/.
bench: install
	$(BIN)/python bench/bench_evaluator.py --out results/bench/evaluator.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache results/splits
