# gedi_fast developer commands. `make test` is what CI runs (.ci/run); `make demo` is the quick start.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
OUT ?= gpu-results
BUILD_STAMP := .build-stamp
BUILD_INPUTS := setup.py pyproject.toml $(wildcard csrc/*)

.PHONY: install test bench demo gpu-check clean

install: $(BUILD_STAMP)

# Dependencies (torch only when it is not importable) and an editable build of gedi_fast._C.
$(BUILD_STAMP): $(BUILD_INPUTS)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q "setuptools>=70.1" wheel ninja
	$(PIP) install -q --no-build-isolation -e ".[dev]"
	@touch $@

# The CPU suite, then the Triton interpreter lane in its own process (TRITON_INTERPRET=1 before triton's import).
test: install
	$(PYTHON) -m pytest tests
	TRITON_INTERPRET=1 $(PYTHON) -m pytest tests/interpreter -p no:cacheprovider

bench: install
	$(PYTHON) -m pytest benchmarks --benchmark-only

demo: install
	$(PYTHON) examples/quickstart.py

# On a CUDA machine: build with CUDA kernels, GPU lane, suite, benchmarks; results under $(OUT).
gpu-check:
	OUT=$(OUT) PYTHON=$(PYTHON) bash .ci/gpu-check

clean:
	rm -rf build *.egg-info gedi_fast/_C*.so $(BUILD_STAMP) .pytest_cache .benchmarks
