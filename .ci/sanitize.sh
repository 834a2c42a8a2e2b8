#!/usr/bin/env bash
# exitguard built with clang and EG_SANITIZE=address,undefined, in a venv of its own,
# and the shutdown scenarios run with the ASan runtime preloaded into every
# interpreter the tests start (CPython itself is not instrumented; exitguard is).
# Installs clang from Debian's packages when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q clang >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get install -y -q clang >/dev/null; }
fi
PY=${PYTHON:-python3}
ver=$("$PY" -c 'import platform; print(platform.python_version())')
V=.venv/asan-$ver
if [ ! -x "$V/bin/python" ]; then
    "$PY" -m venv "$V"
    "$V/bin/python" -m pip -q install --upgrade "setuptools>=61" wheel pytest pytest-timeout
fi
CC=clang EG_SANITIZE=address,undefined EG_WERROR=1 \
    "$V/bin/python" -m pip -q install --no-build-isolation --no-deps --force-reinstall .
asan_rt=$(clang -print-file-name=libclang_rt.asan-x86_64.so)
[ -f "$asan_rt" ] || { echo "sanitize: no ASan runtime at $asan_rt" >&2; exit 1; }
# CPython leaks at exit by design (and exitguard's records on purpose): leak detection
# off; every other ASan or UBSan report aborts the process, which fails its test.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd tests
LD_PRELOAD=$asan_rt ../"$V"/bin/python -m pytest -c ../pyproject.toml --rootdir .. -q \
    test_decref.py test_refs.py test_stoppers.py test_gate.py test_shutdown.py test_logging.py \
    test_event.py test_completion.py test_fork.py test_subinterp.py test_leaks.py \
    -k "not fork_200" "$@"
# (200 forks take minutes under ASan -- every child maps the shadow memory; the fork
# paths still run in test_fork.py's other test and in the torture suite.)
