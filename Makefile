# Two commands for a fresh machine (README): `make demo` and `make test`. Both are idempotent.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

# torch/torchvision first, pinned to the wheels on local disk (docs/environment.md): asking pip for
# them through the project's ranges alone could pull a multi-GB CUDA build from the registry.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,hf,smp,video]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/stvm demo

lint: setup
	$(VENV)/bin/ruff check stvm_sdk cli tests benchmarks examples
	$(VENV)/bin/ruff format --check stvm_sdk cli tests benchmarks examples
	$(VENV)/bin/mypy stvm_sdk cli

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
