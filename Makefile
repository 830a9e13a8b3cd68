# Development helpers. `make dev` builds _core in place (python/splitllm/_core*.so) so that
# PYTHONPATH=python:convert runs the package from the source tree without installing it.
PY ?= python3
BUILD ?= build/dev
CUDA ?= OFF
JOBS ?= 2

.PHONY: dev test lint clean

dev:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPLITLLM_INPLACE=ON \
	  -DSPLITLLM_CUDA=$(CUDA) -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir) -DPython_EXECUTABLE=$$(which $(PY))
	cmake --build $(BUILD) -j $(JOBS)

test: dev
	PYTHONPATH=python:convert $(PY) -m pytest -q

lint:
	$(PY) -m ruff check python convert tests bench

clean:
	rm -rf build python/splitllm/_core*.so python/splitllm/splitllm-bench
