# The two set-up commands of the README: `make run` and `make test`. Each makes .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench lint clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: setup.py $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: setup.py $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	mkdir -p var/state
	$(BIN)/xend-ext serve --state-dir var/state --backend sim

# curl is what the shell example and the README's curl session use.
system-deps:
	@command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends curl)

test: system-deps $(VENV)/.installed-test
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python -m bench

lint: $(VENV)/.installed-test
	$(BIN)/ruff check xend_ext xenapi_classes tests bench

clean:
	rm -rf $(VENV) var build *.egg-info
