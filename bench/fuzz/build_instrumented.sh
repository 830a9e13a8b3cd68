#!/bin/sh
# Builds _core for fuzzing into build/fuzz (not in place): ASan + UBSan (any report aborts),
# and GCC's comparison tracing, whose hooks cov_shim.c forwards to atheris's libFuzzer.
set -eu
cd "$(dirname "$0")/../.."
B=build/fuzz
PY=${PY:-python3}
mkdir -p "$B"
gcc -O2 -fPIC -fvisibility=hidden -c bench/fuzz/cov_shim.c -o "$B/cov_shim.o"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPLITLLM_CUDA=OFF \
  -DCMAKE_CXX_FLAGS="$SAN -fsanitize-coverage=trace-cmp" \
  -DCMAKE_MODULE_LINKER_FLAGS="$SAN $PWD/$B/cov_shim.o -ldl" \
  -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$PY")"
cmake --build "$B" -j "${JOBS:-2}" --target _core
