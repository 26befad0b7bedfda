# gedi_fast developer commands. `make test` is what CI runs (.ci/run); `make demo` is the quick start.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
OUT ?= gpu-results
BENCH_OUT ?= .benchmarks/latest
BUILD_STAMP := .build-stamp
BUILD_INPUTS := setup.py pyproject.toml $(wildcard csrc/*) $(wildcard build_backend/*.py)
export IS_THIS_CHECKOUT := import gedi_fast._C, os, sys; sys.exit(not os.path.samefile(os.path.dirname(gedi_fast.__file__), os.path.join(sys.argv[1], "gedi_fast")))

.PHONY: install test bench demo gpu-check compat clean

# Dependencies (torch only when it is not importable) and an editable build of gedi_fast._C, redone
# when the build inputs' contents, the interpreter or torch changed, or when gedi_fast imported from
# outside this folder is not this checkout's (another clone's editable install) or has no extension.
# The stamp holds a hash of those, not a time: a tarball or checkout gives files any times, and the
# stamp is never committed.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	@want="$$(cat $(BUILD_INPUTS) | sha256sum | cut -c1-32) $$($(PYTHON) -c 'import sys, torch; print(sys.executable, torch.__version__)')"; \
	if [ "$$(cat $(BUILD_STAMP) 2>/dev/null)" = "$$want" ] && (cd / && $(PYTHON) -c "$$IS_THIS_CHECKOUT" "$(CURDIR)") 2>/dev/null; then \
	  echo "gedi_fast is built and current"; \
	else \
	  $(PIP) install -q "setuptools>=70.1" wheel ninja && \
	  $(PIP) install -q --no-build-isolation -e ".[dev]" && echo "$$want" > $(BUILD_STAMP); \
	fi

# The linter (ruff, configured in pyproject.toml), the CPU suite, then the Triton interpreter lane (the tests marked `interpreter`) in its own process:
# TRITON_INTERPRET=1 must be set before triton's import. Each lane runs one pytest-xdist worker per core, a file's
# tests on one worker (PARALLEL= runs them in one process), and lists its 15 slowest tests at the end.
PARALLEL ?= -n auto --dist loadfile
test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest tests --durations=15 $(PARALLEL)
	TRITON_INTERPRET=1 $(PYTHON) -m pytest tests -p no:cacheprovider --durations=15 $(PARALLEL)

# The suites on the device at hand (quick mode without CUDA: GEDI_BENCH_QUICK), then the report:
# $(BENCH_OUT)/bench.json, bench.md (tables), bench.png (speedup against size per op).
bench: install
	mkdir -p $(BENCH_OUT)
	$(PYTHON) -m pytest benchmarks --benchmark-only -q -rs --benchmark-json=$(BENCH_OUT)/bench.json
	$(PYTHON) -m benchmarks.report $(BENCH_OUT)/bench.json --markdown $(BENCH_OUT)/bench.md --plot $(BENCH_OUT)/bench.png

# Train GEDI on moons with the default settings on the CPU (43 s on 2 idle cores), print the scores
# and where the plots are.
demo: install
	$(PYTHON) -m gedi_fast train --dataset moons --out runs/demo --overwrite

# On a CUDA machine, in one call (.ci/gpu-check says what and in which order; 282 s on an H200, 2026-12-04): CUDA build,
# GPU lane, op benchmarks and their profile, step benchmarks, a training run on the GPU; results under $(OUT).
gpu-check:
	OUT=$(OUT) PYTHON=$(PYTHON) bash .ci/gpu-check

# The GPU machine's torch 2.11 / triton 3.6 in .venv-compat (about 5 GB, not in CI): build, sm_90 lane, interpreter lane.
compat:
	bash .ci/compat

clean:
	rm -rf build *.egg-info gedi_fast/_C*.so $(BUILD_STAMP) .pytest_cache .benchmarks
