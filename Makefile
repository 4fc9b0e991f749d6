# Set-up and checks. Every target creates .venv if it is missing.
PYTHON ?= python3
# The CPU wheel of torch 2.13.0 lies on this machine's disk; a looser spec would
# make pip fetch a multi-GB CUDA build. Override on machines with a CUDA torch.
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.geo3d-installed
# cuda_ext/ops.cpp, one folder per op, common/ headers, the simulator (cudasim/, its build.py included).
NATIVE := $(wildcard cuda_ext/*.cpp cuda_ext/*/*.cpp cuda_ext/*/*.h cuda_ext/*/*.cu cuda_ext/cudasim/*.py cuda_ext/cudasim/c10/cuda/*.h)

.PHONY: install demo test test-slow lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, then geo3d without build isolation so cuda_ext/ compiles against it.
$(STAMP): $(BIN)/python pyproject.toml setup.py $(NATIVE)
	$(BIN)/pip install --disable-pip-version-check -q "$(TORCH_SPEC)"
	$(BIN)/pip install --disable-pip-version-check -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/geo3d generate -n 100 --steps 50 -o molecules.sdf

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

test-slow: install
	$(BIN)/pytest -q -m slow

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/pip install --disable-pip-version-check -q -e ".[bench]" --no-build-isolation
	$(BIN)/python benchmarks/radius_graph.py

clean:
	rm -rf build geo3d/_C*.so geo3d/_cudasim*.so $(STAMP)
