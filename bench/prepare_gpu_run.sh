#!/usr/bin/env bash
# Prepares, on a machine with network access, what bench/gpu_run.sh needs on a GPU machine that
# has none. Everything lands in git-ignored folders of the checkout, to be carried:
#   .whl/gguf-0.19.0-py3-none-any.whl         gguf-py (tests, model generator); the GPU image lacks it
#   .gl/llama.cpp-0.3.36-trimmed.tar.xz        llama.cpp as vendored in the llama-cpp-python 0.3.36
#                                              source release, trimmed to what llama-bench needs (4 MB)
#   .gl/smollm2-12l.gguf                       SmolLM2-135M-Instruct Q4_1 cut to its first 12 blocks
#                                              (57 MB: the whole 98 MB file cannot travel)
# Carry per call (64 MiB in all):  test: .whl .gl/smollm2-12l.gguf
#                                   bench-*: .whl .gl/llama.cpp-0.3.36-trimmed.tar.xz
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
mkdir -p .whl .gl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! ls .whl/gguf-0.19.0-*.whl >/dev/null 2>&1; then
    "$PY" -m pip download -q --no-deps --only-binary=:all: gguf==0.19.0 -d .whl
fi

src=.gl/llama.cpp-0.3.36-trimmed.tar.xz
if [ ! -f "$src" ]; then
    # --no-build-isolation: pip only reads the metadata, with the scikit-build-core already here.
    "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation llama-cpp-python==0.3.36 -d "$tmp"
    tar xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
    l="$tmp"/llama_cpp_python-0.3.36/vendor/llama.cpp
    cp "$tmp"/llama_cpp_python-0.3.36/PKG-INFO "$l"/PKG-INFO.llama-cpp-python
    # Not needed to build llama-bench: model files, docs, examples, tests, the web UI and server,
    # and the ggml backends other than CPU and CUDA.
    rm -rf "$l"/{models,docs,examples,pocs,tests,benches,media,gguf-py,conversion,app,skills,ci,grammars,requirements}
    rm -rf "$l"/tools/{ui,server} "$l"/convert_*.py
    for b in cann et hexagon hip metal musa opencl openvino rpc sycl virtgpu vulkan webgpu zdnn zendnn; do
        rm -rf "$l"/ggml/src/ggml-$b
    done
    tar cJf "$src" -C "$(dirname "$l")" llama.cpp
fi

if [ ! -f .gl/smollm2-12l.gguf ]; then
    smol=$(PYTHONPATH=python "$PY" -c "from splitllm.assets import smollm2_path; print(smollm2_path())")
    "$PY" bench/truncate_gguf.py "$smol" .gl/smollm2-12l.gguf --layers 12
fi
ls -la .whl .gl
