# Two entry points: `make demo` (the main job on the embedded data) and `make test`.
# Both create or refresh .venv from pyproject.toml first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/demo

.PHONY: demo test venv clean benchmark

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/openvtp demo --out $(RUN_DIR)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

benchmark: $(STAMP)
	$(VENV)/bin/python benchmarks/inference.py

clean:
	rm -rf $(VENV) runs .pytest_cache
