# Two entry points: `make demo` (the main job on the embedded data) and `make test`.
# Both create or refresh .venv from pyproject.toml first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/demo

.PHONY: demo test venv clean benchmark gpu-check

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

# one GPU: speed, MFU, memory and bf16-vs-fp32 checks (benchmarks/gpu_check.py); without CUDA its reduced CPU mode
gpu-check: $(STAMP)
	$(VENV)/bin/torchrun --standalone --nproc_per_node 1 benchmarks/gpu_check.py --out runs/gpu_check.json
	@if $(VENV)/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(VENV)/bin/python benchmarks/host_syncs.py --config demo; \
	else echo "benchmarks/host_syncs.py: not run (no CUDA)"; fi

clean:
	rm -rf $(VENV) runs .pytest_cache
