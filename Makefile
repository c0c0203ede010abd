# Fresh-machine entry points: each target sets up what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup lint demo test test-fast bench image-test container-test clean

# Bytecode is written by the imports that need it, not for all of the ~22,000 installed files at install time: the
# targets here run with PYTHONDONTWRITEBYTECODE unset (a machine may set it, and then nothing would ever write it).
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e '.[dev]'
	touch $@

setup: $(STAMP)

demo: setup  ## train tiny-bart, tiny-llama and tiny-qwen3 on the bundled sample (4 candidates each), then ensemble with MBR (no server); always trains
	$(VENV)/bin/dialsum train --mode multi_model --models tiny-bart tiny-llama tiny-qwen3 --eval-before --promote if-better \
		--force --set generation.num_candidates=4

lint: setup  ## ruff format and ruff check (settings in pyproject.toml), then the layers contract
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: lint  ## lint, then the whole test suite in two worker processes (what CI runs)
	$(VENV)/bin/pytest -q -n 2 --durations=20

test-fast: lint  ## lint, then the unit tests in two worker processes: no Prefect server, no end-to-end training, no journeys
	$(VENV)/bin/pytest -q -n 2 -m "not slow and not server"

bench: setup  ## CPU benchmarks; results land in bench/results/
	$(PY) bench/padding_waste.py
	$(PY) bench/train_throughput.py
	$(PY) bench/generation_throughput.py
	$(PY) bench/publish_throughput.py
	$(PY) bench/orchestration_overhead.py
	$(PY) bench/checkpoint_overhead.py
	$(PY) bench/loss_memory.py
	$(PY) bench/token_budget_throughput.py
	$(PY) bench/merged_generation.py
	$(PY) bench/host_memory.py
	$(PY) bench/pruning.py
	$(PY) bench/mbr_speed.py
	$(PY) bench/promotion.py
	$(PY) bench/api_throughput.py

image-test:  ## build the trainer image and run a debug training in it (skips without a Docker engine)
	bash images/image-test.sh

container-test: setup  ## build both images; train-all over Docker containers with a Prefect server and S3 (skips without an engine)
	bash images/container-test.sh

clean:
	rm -rf outputs artifacts wandb
