#!/usr/bin/env bash
# ci/test.sh - the whole check, from a fresh Debian 12 machine to green:
#
#   1. dependencies              ci/install-deps.sh
#   2. release build             pip install -v .; any compiler warning fails
#   3. tests                     pytest tests (benchmarks deselected)
#   4. wheel in a clean venv     pip wheel, fresh venv, pinstack-cache --version
#   5. sanitizer build + tests   PINSTACK_SANITIZE=1, ASan+UBSan+LSan, in a
#                                venv of its own: the release build stays the
#                                installed one
#   6. C tests                   tests/c: the cache's storage engine and whole
#                                server, and the search index's realtime
#                                segment under concurrent readers and writers;
#                                optimised, ASan+UBSan, ThreadSanitizer
#
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PYTHON=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pinstack-ci.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS

section() {
    printf '\n========== %s  (%ds) ==========\n' "$*" "$((SECONDS - START))"
}

fail() {
    printf '\nci/test.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

# Compiler (gcc, ld) and Cython warnings, as they appear in a pip -v log.
WARNING_RE='([^[:space:]]+\.(c|h|pyx|pxd|pxi):[0-9]+(:[0-9]+)?: warning:)|((cc1|gcc|ld|collect2): warning:)|(warning: [^[:space:]]+\.(pyx|pxd|pxi):[0-9]+)'

# Imports every compiled module of pinstack._core: an undefined symbol only
# shows at import time.
IMPORT_ALL_EXTENSIONS='
import importlib, pkgutil, pinstack._core
for module in pkgutil.iter_modules(pinstack._core.__path__):
    print("imported", importlib.import_module("pinstack._core." + module.name).__file__)
'

# build_and_install LABEL PYTHON [ENV...]: PYTHON -m pip install -v . with
# the caller's environment (PINSTACK_SANITIZE, ...); shows what was compiled,
# fails on any warning, then imports every extension with the command prefix
# ENV... (env VAR=x ...).
build_and_install() {
    local label=$1 python=$2 log="$WORK/build-$1.log"
    shift 2
    if ! "$python" -m pip install -v . >"$log" 2>&1; then
        tail -n 60 "$log"
        fail "$label build failed (last 60 lines of its log above)"
    fi
    # One full compile command (the flags), then what was compiled and linked.
    grep -m1 -E '^ *gcc .* -c ' "$log" | sed -E 's/^ +//' || true
    grep -E '^ *gcc .* -c ' "$log" | sed -E 's/.* -c ([^ ]+) .*/  compiled \1/' || true
    grep -E '^ *gcc .*-shared' "$log" | sed -E 's/.* -o ([^ ]+).*/  linked   \1/' || true
    if grep -nE "$WARNING_RE" "$log"; then
        fail "$label build printed compiler warnings (above); the C must build -Wall -Wextra clean"
    fi
    echo "$label build: no compiler warnings"
    if ! (cd "$WORK" && "$@" "$python" -c "$IMPORT_ALL_EXTENSIONS"); then
        fail "$label build does not import (undefined symbol? see above)"
    fi
}

# run_pytest ARGS...: pytest, where "no tests ran" (exit 5) is a failure too.
run_pytest() {
    local status=0
    "$@" || status=$?
    if [ "$status" -eq 5 ]; then
        fail "pytest collected no tests"
    elif [ "$status" -ne 0 ]; then
        fail "pytest exited with status $status"
    fi
}

section "1/6 install dependencies"
bash ci/install-deps.sh
# The real interpreter, not a pyenv shim: a shim is a bash script, and the
# sanitizer's LD_PRELOAD below must reach Python only.
PY=$("$PYTHON" -c 'import sys; print(sys.executable)')
echo "python: $PY ($("$PY" --version))"

section "2/6 release build (pip install -v .)"
build_and_install release "$PY" env

section "3/6 tests (release build)"
run_pytest "$PY" -m pytest -q tests --timeout=120

section "4/6 wheel installed into a fresh venv"
rm -f dist/pinstack-*.whl
"$PY" -m pip wheel . -w dist --no-deps -q
ls -l dist/pinstack-*.whl
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q dist/pinstack-*.whl
version_line=$(cd "$WORK" && "$WORK/venv/bin/pinstack-cache" --version)
echo "$version_line"
expected="pinstack-cache $("$PY" -c 'import runpy; print(runpy.run_path("src/pinstack/_version.py")["__version__"])')"
case "$version_line" in
    "$expected "*) ;;
    *) fail "the venv's pinstack-cache --version printed '$version_line', expected '$expected ...'" ;;
esac

section "5/6 sanitizer build (ASan + UBSan + LSan) and tests"
# A venv that sees the test tools of the main environment but installs its
# own (instrumented) pinstack, which the harness then runs.
"$PY" -m venv --system-site-packages "$WORK/sanitizer-venv"
SAN_PY="$WORK/sanitizer-venv/bin/python"
SANITIZER_RUNTIME="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
# Reports go to files as well as being fatal: a report from code running
# inside pytest's own process would otherwise vanish into its capture.
SAN_LOGS="$WORK/sanitizer-logs"
mkdir -p "$SAN_LOGS"
SANITIZER_ENV=(
    LD_PRELOAD="$SANITIZER_RUNTIME"
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:log_path=$SAN_LOGS/asan"
    LSAN_OPTIONS="suppressions=$ROOT/ci/lsan.supp:print_suppressions=0"
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$SAN_LOGS/ubsan"
)
# Prints every report; succeeds if one of them concerns our code or the
# Python process that hosts it. Foreign programs that inherited the preload
# (git, run by pytest-benchmark to describe the machine) are shown, not fatal.
show_sanitizer_reports() {
    local ours=1
    if compgen -G "$SAN_LOGS/*" >/dev/null; then
        printf '\n---------- sanitizer reports ----------\n'
        for f in "$SAN_LOGS"/*; do
            echo "== $f"
            cat "$f"
            if grep -qE 'src/_core|pinstack|python' "$f"; then
                ours=0
            else
                echo "(a foreign program: not counted)"
            fi
        done
    fi
    return $ours
}
export PINSTACK_SANITIZE=1
build_and_install sanitizer "$SAN_PY" env "${SANITIZER_ENV[@]}"
unset PINSTACK_SANITIZE
# PINSTACK_SANITIZE=1 tells tests that measure resident memory to skip
# that assertion (ASan's shadow memory inflates it).
# PYTHONUNBUFFERED: a sanitizer that stops the process (halt_on_error)
# exits without flushing stdio; unbuffered, pytest's progress up to the
# failing test is still in the log.
if ! (run_pytest env "${SANITIZER_ENV[@]}" PINSTACK_SANITIZE=1 PYTHONUNBUFFERED=1 \
        "$SAN_PY" -m pytest -q tests --timeout=300 --benchmark-disable); then
    show_sanitizer_reports || true
    fail "tests failed under the sanitizers"
fi
if show_sanitizer_reports; then
    fail "sanitizer reports (above) although every test passed"
fi

section "6/6 C storage engine tests (optimised, ASan+UBSan, ThreadSanitizer)"
make -C tests/c clean >/dev/null
make -C tests/c test || fail "C tests (tests/c) failed"

section "all checks passed"
