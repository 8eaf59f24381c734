# The two commands of the README, and what they stand on.
# `make run`: the whole stack on this machine with a simulated fleet (Ctrl-C stops it); a second `make run`
# continues from var/local, `make run FRESH=1` (or `make reset` first) starts clean.
# `make test`: every test, with the tools they need installed first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEVICES ?= 1000
RATE ?= 50
FRESH ?=
BENCH_ARGS ?=

.PHONY: run reset test check lint tools bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/pulsestack run local --devices $(DEVICES) --rate $(RATE) $(if $(filter-out 0,$(FRESH)),--fresh)

# The local stack's data, secrets and logs (stop `make run` first).
reset:
	rm -rf var/local

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
	$(BIN)/mypy

check: lint test

clean:
	rm -rf $(VENV) var
