# exitguard -- developer commands.  See README.md ("Try it", "Development").
#
#   make test        build and test with $(PYTHON) (default python3) in .venv/<version>
#   make test-all    make test on every interpreter: pyenv, 3.13.15(t) from source, sid's 3.14/3.15 (+dbg)
#   make demo        build exitguard and examples/ticker, run the demo
#   make torture     $(TORTURE_RUNS) randomized shutdown scenarios (make test runs them too)
#   make valgrind    exitguard's paths under valgrind memcheck
#   make bench       benchmarks beside pybind11/nanobind/Cython, same run (bench-all, bench-callgrind)
#   make check-packaging  sdist + wheel, twine, fresh-venv installs, typing (once, not per interpreter)
#   make clean
#
# Each interpreter gets its own virtual environment; pytest and the build tools
# come from PyPI.  Builds use -Werror (EG_WERROR=1).

PYTHON ?= python3
PYTEST_ARGS ?=
EXTRA_PYTHONS ?=

# Version plus ABI flags ("t" free-threaded, "d" debug): python3.14 and python3.14-dbg
# must never share a venv (or a C stress-test build).
PYVER := $(shell $(PYTHON) -c 'import platform, sys; print(platform.python_version() + sys.abiflags)')
VENV := .venv/$(PYVER)
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip --disable-pip-version-check -q

.PHONY: test test-all demo install clean venv torture valgrind bench bench-run bench-report bench-all bench-callgrind check-packaging realworld realworld-one

# The virtual environment and the test/build dependencies, once per interpreter.
$(VENV)/.deps:
	$(PYTHON) -m venv --clear $(VENV)
	$(PIP) install --upgrade "setuptools>=61" wheel pytest pytest-timeout
	$(PIP) install --only-binary hypothesis hypothesis   # never a source build (3.13t: Rust)
	touch $@

venv: $(VENV)/.deps

# Reinstall every time so that C changes are always picked up.  The wheel stays in
# $(VENV)/wheelhouse: the tests that build the examples in isolation install exactly
# this build of exitguard into their build environments (tests/isolated_build.py).
install: $(VENV)/.deps
	rm -rf $(VENV)/wheelhouse
	EG_WERROR=1 $(PIP) wheel --no-build-isolation --no-deps -w $(VENV)/wheelhouse .
	$(PIP) install --no-deps --force-reinstall $(VENV)/wheelhouse/exitguard-*.whl

TORTURE_RUNS ?= 200
TORTURE_SEED ?=

test: install
	$(MAKE) --no-print-directory -C tests/stress/c run PYTHON=$(abspath $(VPY)) OUT=build/$(PYVER)
	cd tests && REALWORLD_BUILD=$(abspath $(VENV))/realworld ../$(VPY) -m pytest -c ../pyproject.toml --rootdir .. --basetemp=$(abspath $(VENV))/pytest-tmp $(PYTEST_ARGS)
	$(MAKE) --no-print-directory torture

# Randomized shutdown scenarios, each in a fresh interpreter; prints its seed and,
# for a failure, the command that replays it.  make torture TORTURE_SEED=N replays a run.
torture: $(VENV)/.deps
	@[ -f $(VENV)/lib/*/site-packages/exitguard/__init__.py ] || $(MAKE) --no-print-directory install
	$(VPY) tests/stress/torture.py --runs $(TORTURE_RUNS) --build $(VENV)/egtest $(if $(TORTURE_SEED),--seed $(TORTURE_SEED))

PYENV_ROOT ?= $(shell pyenv root 2>/dev/null)
export PYENV_ROOT
# Every CPython >= 3.9 that pyenv has (bench-all uses it; test-all has its tiers).
ALL_PYTHONS := $(shell for p in $(PYENV_ROOT)/versions/*/bin/python; do \
	  [ -x "$$p" ] && "$$p" -c 'import sys; sys.exit(not (sys.implementation.name == "cpython" and sys.version_info >= (3, 9)))' 2>/dev/null && echo "$$p"; \
	done) $(EXTRA_PYTHONS)

# make test on every interpreter, in tiers (.ci/test-all.sh): pyenv's CPythons,
# 3.13.15 and 3.13.15t built from source, and 3.14/3.15 with their debug builds in a
# Debian sid chroot.  EG_TIERS="pyenv" (or "source", "sid") picks tiers.
test-all:
	@EXTRA_PYTHONS="$(EXTRA_PYTHONS)" bash .ci/test-all.sh

# exitguard's paths under valgrind memcheck (tests/valgrind_scenarios.py, through
# python -m exitguard.leakcheck): fails on definite leaks or invalid accesses
# outside CPython -- exitguard's own frames included.
valgrind: install
	$(PIP) install --no-build-isolation --no-deps --force-reinstall ./examples/ticker
	$(VPY) tests/stress/torture.py --runs 0 --build $(VENV)/egtest
	PYTHONPATH=$(VENV)/egtest $(VPY) -m exitguard.leakcheck -- $(VPY) tests/valgrind_scenarios.py

# Benchmarks (issue 17): exitguard beside pybind11, nanobind and Cython (from PyPI,
# installed by bench/build.py under bench/build) and CPython's own APIs, measured in
# the same run; see docs/performance.md.  bench-run writes bench/results/<version>.json;
# bench-report turns every results file into docs/performance.md and the chart.
bench: bench-run
	$(MAKE) --no-print-directory bench-report

bench-run: install
	nice -n 5 $(VPY) bench/run.py $(BENCH_ARGS)

# matplotlib from a wheel only (never a source build): without one, no chart, said so.
bench-report: $(VENV)/.deps
	$(PIP) install --only-binary :all: matplotlib || echo "bench-report: no matplotlib wheel for $(PYVER): no chart"
	$(VPY) bench/report.py

# Every interpreter of make test-all: pyenv's, 3.13.15(t) built from source, and sid's
# 3.14 and 3.15 in the chroot, whose results come back through EG_SID_EXPORT.
BENCH_SID_PYTHONS ?= python3.14 python3.15
bench-all:
	@failed=""; \
	for py in $(ALL_PYTHONS) $$(.ci/build-cpython.sh 2>/dev/null); do \
	    $(MAKE) --no-print-directory bench-run PYTHON=$$py || failed="$$failed $$py"; done; \
	if .ci/sid.sh setup; then for py in $(BENCH_SID_PYTHONS); do \
	    EG_SID_EXPORT="bench/results bench/build/wheels" .ci/sid.sh run \
	        make --no-print-directory bench-run PYTHON=$$py || failed="$$failed $$py(sid)"; done; \
	else failed="$$failed sid-chroot"; fi; \
	$(MAKE) --no-print-directory bench-report; \
	if [ -n "$$failed" ]; then echo "bench-all: failed for:$$failed"; exit 1; fi

# Instruction counts of the hot paths under callgrind (bench/callgrind.py): make
# bench-callgrind prints them and records them in bench/callgrind_baseline.json for
# this interpreter; the check (tests/test_callgrind_guard.py) fails when one grows.
bench-callgrind: install
	$(VPY) bench/callgrind.py --update

# Packaging, once per CI run rather than per interpreter (tests/check_packaging.py):
# python -m build (the sdist, then the wheel from it), twine check --strict, the wheel
# and the sdist installed in fresh venvs and smoke-tested, every example rebuilt in
# isolation against that wheel, the CMake package's version rules, the pkg_config
# entry point, and mypy --strict, stubtest and pyright on the stubs and a typed
# script.  Its tools come from PyPI into build/packaging, removed afterwards.
check-packaging:
	$(PYTHON) tests/check_packaging.py --work build/packaging

# The realworld scenarios (tests/realworld, issue 16).  make realworld: both
# builds of every scenario, REALWORLD_RUNS (10) fresh processes each, on every
# interpreter of make test-all's tiers, then docs/realworld.md is regenerated
# (tests/realworld/run_all.py; REALWORLD_PYTHONS="..." picks interpreters).
# make realworld-one: the same on $(PYTHON) alone; prints the summary as one
# "REALWORLD-RESULTS {json}" line.  make test runs 3 exitguard runs per scenario.
realworld:
	@python3 tests/realworld/run_all.py

REALWORLD_RUNS ?= 10
REALWORLD_JOBS ?= 2
REALWORLD_ONLY ?=
realworld-one: install
	$(VPY) tests/realworld/harness.py --build $(VENV)/realworld --runs $(REALWORLD_RUNS) \
	    --jobs $(REALWORLD_JOBS) $(REALWORLD_ARGS) $(if $(REALWORLD_ONLY),--only $(REALWORLD_ONLY)) --json -

demo: install
	$(PIP) install --no-build-isolation --no-deps --force-reinstall ./examples/ticker
	$(VPY) examples/ticker/demo.py
	@$(VPY) tests/realworld/gen_table.py --summary

clean:
	rm -rf build dist src/*.egg-info .venv src/exitguard/*.so examples/ticker/build tests/stress/c/build bench/build
