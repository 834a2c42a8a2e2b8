#!/usr/bin/env bash
# make test-all: `make test` on every interpreter exitguard supports, tier by tier,
# then one summary line per interpreter.  Exit status 1 when any tier that could be
# set up failed; a tier that cannot be set up here (no pyenv, archive unreachable)
# is printed as NOT RUN with its reason -- never silently skipped, never PASS.
#
#   tier pyenv   every CPython >= 3.9 under pyenv (3.9 ... 3.13.0 here), + EXTRA_PYTHONS
#   tier source  CPython 3.13.15 and 3.13.15t built from Debian sid's source package
#                (.ci/build-cpython.sh; trixie's 3.13.5 only as a loud FALLBACK)
#   tier sid     CPython 3.14 and 3.15 and their debug builds from Debian sid, in a
#                chroot (.ci/sid.sh)
#
# EG_TIERS="pyenv source sid" (the default) chooses tiers; each tier's wall time is
# printed with its result.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYENV_ROOT=${PYENV_ROOT:-$HOME/.pyenv}
TIERS=${EG_TIERS:-pyenv source sid}
summary=()
status=0

abi() { "$1" -c 'import platform, sys; print(platform.python_version() + sys.abiflags)'; }
record() {   # record <PASS|FAIL> <label> <seconds>
    summary+=("$(printf '%-4s  %-34s %5ss' "$1" "$2" "$3")")
    [ "$1" = PASS ] || status=1
}
run_make_test() {   # run_make_test <label> <make test command...>
    local label=$1; shift
    local t0; t0=$(date +%s)
    echo "=== $label: $*"
    if "$@"; then record PASS "$label" $(( $(date +%s) - t0 )); else record FAIL "$label" $(( $(date +%s) - t0 )); fi
}

for tier in $TIERS; do
    case $tier in
    pyenv)
        found=0
        for py in "$PYENV_ROOT"/versions/*/bin/python ${EXTRA_PYTHONS:-}; do
            [ -x "$py" ] || continue
            "$py" -c 'import sys; sys.exit(not (sys.implementation.name == "cpython" and sys.version_info >= (3, 9)))' 2>/dev/null || continue
            found=1
            run_make_test "$(abi "$py") (pyenv)" make --no-print-directory test PYTHON="$py"
        done
        [ $found = 1 ] || summary+=("NOT RUN  tier pyenv: no CPython >= 3.9 under $PYENV_ROOT")
        ;;
    source)
        t0=$(date +%s)
        if out=$(.ci/build-cpython.sh 2>.ci-build.err); then
            echo "source tier: built or reused in $(( $(date +%s) - t0 )) s"
            if grep -q FALLBACK .ci-build.err; then
                summary+=("WARN  tier source: $(grep FALLBACK .ci-build.err | tail -1)")
            fi
            for py in $out; do
                run_make_test "$(abi "$py") (source)" make --no-print-directory test PYTHON="$py"
            done
        else
            rc=$?
            cat .ci-build.err
            if [ $rc = 3 ]; then summary+=("NOT RUN  tier source: $(tail -1 .ci-build.err)")
            else summary+=("FAIL  tier source: building CPython failed: $(tail -1 .ci-build.err)"); status=1; fi
        fi
        rm -f .ci-build.err
        ;;
    sid)
        t0=$(date +%s)
        if .ci/sid.sh setup 2>.ci-sid.err; then
            echo "sid tier: chroot ready in $(( $(date +%s) - t0 )) s"
            for py in $(.ci/sid.sh pythons); do
                run_make_test "$py (sid chroot)" .ci/sid.sh run make --no-print-directory test PYTHON="$py"
            done
        else
            rc=$?
            cat .ci-sid.err
            if [ $rc = 3 ]; then summary+=("NOT RUN  tier sid: $(tail -1 .ci-sid.err)")
            else summary+=("FAIL  tier sid: setting up the chroot failed: $(tail -1 .ci-sid.err)"); status=1; fi
        fi
        rm -f .ci-sid.err
        ;;
    *) echo "test-all: unknown tier '$tier' (pyenv, source, sid)" >&2; exit 2 ;;
    esac
done

echo
echo "=== test-all summary"
for line in "${summary[@]}"; do echo "$line"; done
exit $status
