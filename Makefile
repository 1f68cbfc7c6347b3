# The README's commands. Each target sets up .venv first if it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP_QUIET := 2>&1 | grep -v "^WARNING: Location" || true

.PHONY: setup train test test-all bench gpu-check lint format ui clean experiments-multitask experiments-debias experiments-calibration experiments-retrieval

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "setup: installing recolab and its dependencies into $(VENV) (torch, Lightning, MLflow, faiss: a few minutes the first time; pip's progress follows)"
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]' $(PIP_QUIET)
	$(BIN)/python -c "import recolab, torch, pytorch_lightning, hydra, mlflow, faiss, sklearn"
	touch $(STAMP)

train: setup                 ## MMoE on the synthetic world, tracked in MLflow
	$(BIN)/python -m recolab train +exp=mmoe $(ARGS)

test: setup                  ## the default suite (< 10 minutes on 2 cores)
	$(BIN)/python -m pytest -q

test-all: setup              ## everything, the slow tests included
	$(BIN)/python -m pytest -q -m ""

bench: setup                 ## speed figures into experiments/bench/
	$(BIN)/python benchmarks/run_all.py

gpu-check:                   ## on a GPU machine: pytest -m gpu, then experiments/bench/gpu.md (ARGS=--wheels here first; ARGS=--dry-run anywhere)
	bash benchmarks/gpu_check.sh $(ARGS)

experiments-multitask: setup ## the multi-task tables (5 seeds, compare intervals): experiments/multitask/results.md (~75 min on 2 shared cores)
	$(BIN)/python experiments/multitask/run.py $(ARGS)

experiments-debias: setup    ## position and duration bias tables (5 seeds, compare intervals): experiments/debias/results.md (~41 min)
	$(BIN)/python experiments/debias/run.py $(ARGS)

experiments-calibration: setup ## calibration tables (5 seeds, compare intervals): experiments/calibration/results.md (~7 min)
	$(BIN)/python experiments/calibration/run.py $(ARGS)

experiments-retrieval: setup  ## recallers and samplers, ml-latest-small + synthetic, 5 seeds, compared with intervals: experiments/retrieval/README.md (~75 min)
	$(BIN)/python experiments/retrieval/run.py $(ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

ui: setup                    ## MLflow UI over the local store (mlflow.db)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --port $${PORT:-5000}

clean:
	rm -rf outputs mlruns .pytest_cache
