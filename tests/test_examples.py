"""The examples are clients of the installed exitguard, built the way users build.

Each example (examples/*) declares exitguard as a build requirement and is built by an
isolated ``pip install`` (tests/isolated_build.py): setup.py (ticker), CMake through
scikit-build-core (cmake_pinger), meson through meson-python (meson_dropper, through
pkg-config and without it), Cython (cython_worker), pybind11 (pybind11_pool) and nanobind
(nanobind_ticker).  Each built extension then runs a workload that is still busy when
the program ends, in a fresh interpreter, checked by exitguard.testing.assert_clean_exit
(exit code, stderr, a time bound, no references left for exitguard to release) and by
its counters (every object handed to native code freed).  The pybind11 and nanobind
examples carry a naive flavour written the way those bindings are used today: the same
check must fail for it -- a crash, a fatal error or a hang -- and pass for the flavour
that uses exitguard's adapter.
"""

import errno
import json
import os
import textwrap

import pytest

import exitguard
from conftest import HERE
from exitguard.testing import CleanExitError, assert_clean_exit

# The first test pays for the session's builds (tests/isolated_build.py): minutes on
# a loaded two-core machine, past pytest-timeout's default of 300 s for one test.
# Each build has its own bound (BUILD_TIMEOUT); this is the bound of them all.
pytestmark = pytest.mark.timeout(2400)

# A guarded workload ends within seconds even on a debug build; the naive ones need
# only long enough to show that they hang rather than exit (a clean exit after the
# final report takes milliseconds).
CLEAN_TIMEOUT = 60
NAIVE_TIMEOUT = 6

def _built(example_builds, key):
    b = example_builds[key]
    if isinstance(b, str):
        pytest.skip(b)
    assert b.ok, b.describe()
    # Only an isolated (PEP 517) build installs build dependencies: older pips
    # would otherwise build a project without pyproject.toml in this environment.
    assert "Installing build dependencies" in b.log, b.describe()
    return b


def _run(build, code, **kw):
    """assert_clean_exit on `code` with the example on sys.path; returns (report, data)."""
    env = {"PYTHONPATH": os.pathsep.join([build.target, HERE])}
    r = assert_clean_exit(textwrap.dedent(code), env=env, **kw)
    data = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            data.update(json.loads(line))
    assert data, "the scenario printed no report:\n" + r.stdout + r.stderr
    return r, data


def _assert_fails_at_exit(build, code):
    env = {"PYTHONPATH": os.pathsep.join([build.target, HERE])}
    with pytest.raises(CleanExitError) as info:
        assert_clean_exit(textwrap.dedent(code), env=env, timeout=NAIVE_TIMEOUT)
    assert info.value.kind in ("crash", "fatal error", "hang"), str(info.value)
    return info.value


def _assert_no_leftovers(data, fed):
    stats = data["stats"]
    assert data["freed"] == fed, data
    assert stats["refs_live"] == 0 and stats["refs_released_at_exit"] == 0, stats
    assert stats["decref_dropped"] == 0, stats


# ---- setup.py: examples/ticker ----------------------------------------------------


@pytest.mark.example("ticker")
def test_ticker_builds_isolated_and_exits_mid_work(example_builds):
    """The setup.py ticker example builds in isolation and exits cleanly mid-work, every fed object freed."""
    build = _built(example_builds, "ticker")
    r, data = _run(build, """
        import scenario, ticker
        t = ticker.Ticker(nthreads=2, spin=2000)
        scenario.at_exit(lambda: {"ticker": t.stats()})
        for i in range(20000):
            t.feed(scenario.Tracked())
        """, timeout=CLEAN_TIMEOUT)
    _assert_no_leftovers(data, 20000)
    assert data["ticker"]["processed"] == 20000, data
    assert data["ticker"]["stopped_by_exitguard"], data


# ---- CMake through scikit-build-core: examples/cmake_pinger ------------------------


@pytest.mark.example("cmake_pinger")
def test_cmake_pinger_finds_the_cmake_package(example_builds):
    """A scikit-build-core build finds exitguard's CMake package, which reports its version and ABI."""
    build = _built(example_builds, "cmake_pinger")
    # exitguardConfig.cmake's own status line: found in the build environment.
    line = "Found exitguard %s (ABI %d): " % (exitguard.__version__, exitguard.ABI_VERSION)
    assert line in build.log, build.describe()


@pytest.mark.example("cmake_pinger")
def test_cmake_pinger_exits_cleanly_while_calling_python(example_builds):
    """The CMake pinger exits cleanly while a native thread calls Python; its eg_log lines reach logging."""
    build = _built(example_builds, "cmake_pinger")
    r, data = _run(build, """
        import functools, logging, threading, scenario, pinger
        logging.basicConfig(level=logging.INFO, format="%(name)s %(threadName)s: %(message)s")
        enough = threading.Event()
        def on_call(payload, n):
            if n >= 150:
                enough.set()
        # A partial, not a function: free-threaded builds free functions only in a
        # GC pass (deferred reference counting), and the count below is exact.
        pinger.start(functools.partial(on_call, scenario.Tracked()), period_ms=0)
        scenario.at_exit(lambda: {"pinger": pinger.stats()})
        assert enough.wait(30), "the pinger did not call 150 times in 30 s"
        """, timeout=CLEAN_TIMEOUT)
    assert data["pinger"]["calls"] >= 150 and data["pinger"]["refused"] == 0, data
    assert "pinger pinger: 100 calls so far" in r.stderr, r.stderr       # eg_log, threadName
    _assert_no_leftovers(data, 1)      # the callback's payload: released by the thread


# ---- meson through meson-python: examples/meson_dropper -----------------------------

DROPPER = """
    import scenario, dropper
    dropper.start()
    scenario.at_exit(lambda: {"dropper": dropper.stats()})
    for i in range(20000):
        dropper.feed(scenario.Tracked())
    """


def _check_dropper(build):
    r, data = _run(build, DROPPER, timeout=CLEAN_TIMEOUT)
    assert data["dropper"] == {"fed": 20000, "dropped": 20000, "running": False}, data
    _assert_no_leftovers(data, 20000)


@pytest.mark.example("meson_pkg_config")
def test_meson_dropper_through_pkg_config(example_builds):
    """The meson example finds exitguard through pkg-config, then exits cleanly with all 20000 drops freed."""
    build = _built(example_builds, "meson_pkg_config")
    assert "Run-time dependency exitguard found: YES %s" % exitguard.__version__ in build.log, build.describe()
    _check_dropper(build)


@pytest.mark.example("meson_isolated")
def test_meson_dropper_in_a_plain_isolated_build(example_builds):
    """The meson example builds where pkg-config cannot see exitguard, then exits cleanly, all drops freed."""
    build = _built(example_builds, "meson_isolated")
    # pkg-config cannot see the build environment's exitguard; meson.build asks it.
    assert "Run-time dependency exitguard found: NO" in build.log, build.describe()
    _check_dropper(build)


# ---- Cython: examples/cython_worker -------------------------------------------------


@pytest.mark.example("cython_worker")
def test_cython_worker_drops_and_attaches_then_exits_cleanly(example_builds):
    """The Cython worker drops objects and calls Python from its thread, then exits cleanly, all freed."""
    build = _built(example_builds, "cython_worker")
    r, data = _run(build, """
        import scenario, cyworker
        calls = []
        w = cyworker.Worker(calls.append, every=100)
        scenario.at_exit(lambda: {"worker": w.stats(), "calls": len(calls)})
        for i in range(20000):
            w.feed(scenario.Tracked())
        """, timeout=CLEAN_TIMEOUT)
    w = data["worker"]
    assert w["fed"] == w["dropped"] == 20000 and w["stopped"], data
    assert w["calls"] == data["calls"] and w["refused"] == 0, data
    _assert_no_leftovers(data, 20000)


# ---- pybind11 and nanobind: naive and guarded ---------------------------------------

# Tasks that take a millisecond (they sleep: an I/O-bound workload), so that nearly
# all of them are still queued when the program ends.
PB11_POOL = """
    import functools, time, scenario, pb11pool
    pool = pb11pool.%s
    pool.start(2)
    scenario.at_exit(lambda: {"pool": pool.stats()})
    def task(payload):
        time.sleep(0.001)
    for i in range(5000):
        pool.submit(functools.partial(task, scenario.Tracked()))
    """

# A probe registered before exitguard is imported runs after its phase 2: a thread
# attaching then must be refused, as a value.
PROBE = """
    import atexit, json
    def probe():
        import %(mod)s
        called = []
        rc = %(mod)s.guarded.attach_probe(lambda: called.append(1))
        print(json.dumps({"probe": rc, "called": len(called)}), flush=True)
    atexit.register(probe)
    import exitguard, %(mod)s
    called = []
    print(json.dumps({"before": %(mod)s.guarded.attach_probe(lambda: called.append(1)),
                      "called_before": len(called)}), flush=True)
    """


@pytest.mark.example("pybind11_pool")
def test_pybind11_naive_pool_fails_at_exit(example_builds):
    """The pybind11 pool written without exitguard, busy at exit, crashes, dies fatally or hangs."""
    build = _built(example_builds, "pybind11_pool")
    _assert_fails_at_exit(build, PB11_POOL % "naive")


@pytest.mark.example("pybind11_pool")
def test_pybind11_guarded_pool_exits_cleanly(example_builds):
    """The pybind11 pool on exitguard's adapter, busy at exit, exits cleanly: every task ran or dropped."""
    build = _built(example_builds, "pybind11_pool")
    r, data = _run(build, PB11_POOL % "guarded", timeout=CLEAN_TIMEOUT)
    pool = data["pool"]
    assert pool["submitted"] == 5000 and pool["ran"] + pool["dropped"] + pool["refused"] == 5000, data
    assert pool["dropped"] > 0, data       # the workload was still busy at exit
    _assert_no_leftovers(data, 5000)


@pytest.mark.example("pybind11_pool")
def test_pybind11_adapter_refuses_an_attach_after_exit(example_builds):
    """The pybind11 adapter attaches while the program runs, and returns -ESHUTDOWN after exit."""
    build = _built(example_builds, "pybind11_pool")
    r, data = _run(build, PROBE % {"mod": "pb11pool"}, timeout=CLEAN_TIMEOUT)
    assert data["before"] == 0 and data["called_before"] == 1, data
    assert data["probe"] == -errno.ESHUTDOWN and data["called"] == 0, data


NB_TICKER = """
    import functools, threading, scenario, nbticker
    ticker = nbticker.%s
    enough = threading.Event()
    def on_tick(payload, n):
        if n >= 50:
            enough.set()
    ticker.start(functools.partial(on_tick, scenario.Tracked()), 2, 1)
    scenario.at_exit(lambda: {"ticker": ticker.stats()})
    assert enough.wait(30), "the ticker did not tick 50 times in 30 s"
    """


@pytest.mark.example("nanobind_ticker")
def test_nanobind_naive_ticker_fails_at_exit(example_builds):
    """The nanobind ticker written without exitguard, ticking at exit, crashes, dies fatally or hangs."""
    build = _built(example_builds, "nanobind_ticker")
    _assert_fails_at_exit(build, NB_TICKER % "naive")


@pytest.mark.example("nanobind_ticker")
def test_nanobind_guarded_ticker_exits_cleanly(example_builds):
    """The nanobind ticker on exitguard's adapter, ticking at exit, exits cleanly with its payload freed."""
    build = _built(example_builds, "nanobind_ticker")
    r, data = _run(build, NB_TICKER % "guarded", timeout=CLEAN_TIMEOUT)
    assert data["ticker"]["ticks"] >= 50 and data["ticker"]["refused"] == 0, data
    _assert_no_leftovers(data, 1)      # the callback's payload: dropped in phase 1


@pytest.mark.example("nanobind_ticker")
def test_nanobind_adapter_refuses_an_attach_after_exit(example_builds):
    """The nanobind adapter attaches while the program runs, and returns -ESHUTDOWN after exit."""
    build = _built(example_builds, "nanobind_ticker")
    r, data = _run(build, PROBE % {"mod": "nbticker"}, timeout=CLEAN_TIMEOUT)
    assert data["before"] == 0 and data["called_before"] == 1, data
    assert data["probe"] == -errno.ESHUTDOWN and data["called"] == 0, data
