# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs qgeom into it (torch from the machine's pip
# constraints/cache when present; nothing is downloaded at run time).
VENV   ?= .venv
PYTHON ?= python3
STAMP  := $(VENV)/.qgeom-installed

.PHONY: demo test test-all figures benchmark benchmark-memory clean-runs

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e '.[dev,notebooks]'
	@touch $(STAMP)

demo: $(STAMP)  ## the transfer experiment's demo preset (micro ViT, 6 tasks, 2 bits) on CPU
	$(VENV)/bin/qgeom demo

test: $(STAMP)  ## the default test suite (< 10 minutes on 2 cores)
	$(VENV)/bin/python -m pytest -q

test-all: $(STAMP)  ## also the slow checks
	$(VENV)/bin/python -m pytest -q -m ''

figures: $(STAMP)  ## regenerate paper_figures/ from the demo run
	$(VENV)/bin/qgeom figures runs/demo --out-dir paper_figures

BENCH_STAMP := $(VENV)/.qgeom-bench-installed

$(BENCH_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install -q -e '.[bench]'
	@touch $(BENCH_STAMP)

benchmark: $(BENCH_STAMP)  ## curvature products, the peers side by side, the README spectrum's cost (1 thread)
	$(VENV)/bin/python benchmarks/curvature.py --threads 1
	$(VENV)/bin/python benchmarks/peers.py --threads 1
	$(VENV)/bin/python benchmarks/spectrum_cost.py

benchmark-memory: $(STAMP)  ## the ViT-B/16 memory plan (measured at batches 1 and 2, several minutes)
	$(VENV)/bin/python benchmarks/memory_plan.py

clean-runs:
	rm -rf runs
