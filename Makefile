# The two commands of the README, and what they stand on.
# `make run`: the whole stack on this machine with a simulated fleet (Ctrl-C stops it).
# `make test`: every test, with the tools they need installed first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEVICES ?= 1000
RATE ?= 50
BENCH_ARGS ?=

.PHONY: run test check lint tools bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/pulsestack run local --devices $(DEVICES) --rate $(RATE)

# Debian tools the ops tests check files with (promtool, amtool, ...); needs root, as in CI.
tools:
	@for script in .ci/tools-*.sh; do [ -e "$$script" ] || continue; bash "$$script"; done

test: $(BIN)/.installed tools
	$(BIN)/pytest tests

# The capacity benchmark: the reference loads, the ramp to the ceiling, rsyslog beside it (bench/README.md).
bench: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy pulsestack

check: lint test

clean:
	rm -rf $(VENV) var
