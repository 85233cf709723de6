# Quick start:  make demo   (install, then run the demo: the bundled model on the bundled street clip)
#               make test   (install, then ruff, the C++ tests (ctest) and pytest)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CUDA kernels compile wherever nvcc is, GPU or not. The dev build targets Orin (8.7) and
# Hopper (9.0, with PTX that newer GPUs JIT) to keep builds short; `pip install .` alone builds setup.py's full default list.
CUDA_HOME ?= $(wildcard /usr/local/cuda)
export CUDA_HOME
export TORCH_CUDA_ARCH_LIST ?= 8.7;9.0+PTX
export MAX_JOBS ?= 2
SOURCES := setup.py $(wildcard csrc/*/*.h csrc/*/*.cpp csrc/*/*.cu python/*.cpp)

.PHONY: install demo test lint ctest pytest clean

install: $(VENV)/.built

$(VENV)/.deps: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	$(BIN)/python -c "import iared_edge._C" && $(BIN)/iared-edge info
	touch $@

demo: install
	mkdir -p out
	$(BIN)/python samples/webcam_explain.py --source demo --headless --output out/demo.mp4

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ctest:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake -j2 > /dev/null
	ctest --test-dir build/cmake --output-on-failure

pytest: install
	$(BIN)/python -m pytest -q tests

test: install lint ctest pytest

clean:
	rm -rf $(VENV) build *.egg-info iared_edge/_C*.so iared_edge/_build_info.py out
