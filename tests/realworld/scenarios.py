"""The realworld scenarios: one per upstream report, what it reproduces, what counts as clean.

Each entry names the upstream report it re-creates (in this project's own code:
nothing here is copied from the report), the failure class, what the naive build
does according to the report, what the exitguard port changes, and the checks
applied to the counters the extension prints at exit (rw.h).  docs/realworld.md
is generated from this table and tests/realworld/results/*.json (gen_table.py).
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))

# Failure classes, in the order docs/realworld.md and docs/porting.md use.
CLASSES = {
    "attach": "attach racing finalization (late PyGILState_Ensure from a native thread)",
    "terminate": "C++ std::terminate: forced unwind through a noexcept frame that attaches",
    "pool": "native thread pool joined after finalization (hang since 3.13.8/3.14)",
    "late-decref": "late decref: static or thread-local holder released after Py_Finalize",
    "atexit": "atexit too late (or never) for threads the interpreter waits for",
    "logging": "logging from native threads during shutdown",
    "asyncio": "asyncio callbacks after the loop closed",
}


# ---- checks: each returns None when fine, else (outcome, problem) -----------------
#
# The outcome words are the harness's (harness.py): leak (objects never freed),
# lost (messages neither delivered nor counted), killed (a native thread was
# force-unwound), stuck (a native thread never ended), idle (the scenario never
# did its work -- a broken reproducer, not a result).


def freed_all(c, variant):
    """Every Token native code held was deallocated, or exitguard counted it as leaked."""
    if c.get("made", 0) == 0:
        return "idle", "no object was ever made: the scenario did not run"
    missing = c["made"] - c["freed"] - c.get("eg_counted_leaks", 0)
    if missing > 0:
        return "leak", "%d of %d objects never freed" % (missing, c["made"])
    return None


def no_late(c, variant):
    """Nothing touched Python after the point the scenario says it must not."""
    if c.get("late", 0):
        return "late", "%d late touches of Python" % c["late"]
    return None


def did_calls(c, variant):
    if c.get("calls", 0) == 0:
        return "idle", "native threads never called into Python: the scenario did not run"
    return None


def delivered_all(c, variant):
    """Every message emitted was delivered or counted as dropped."""
    lost = c.get("emitted", 0) - c.get("delivered", 0) - c.get("dropped", 0)
    if c.get("emitted", 0) == 0:
        return "idle", "nothing was emitted: the scenario did not run"
    if lost > 0:
        return "lost", "%d of %d messages neither delivered nor counted" % (lost, c["emitted"])
    return None


def threads_ended(c, variant):
    """Every native thread started returned normally (none killed, none left running)."""
    if c.get("killed", 0):
        return "killed", "%d native threads force-unwound (pthread_exit)" % c["killed"]
    if c.get("ended", 0) < c.get("started", 0):
        return "stuck", "%d of %d native threads never ended" % (c["started"] - c["ended"],
                                                                c["started"])
    return None


def eg_only(check):
    """Apply `check` to the exitguard build only (the naive shape may never end a thread
    by design: the report's thread loops forever)."""
    def wrapped(c, variant):
        return check(c, variant) if variant == "exitguard" else None
    wrapped.__doc__ = check.__doc__
    return wrapped


class Scenario:
    def __init__(self, name, *, upstream, url, project, klass, title, source, shape, naive, port,
                 also=(), checks=(), exit_code=0, time_bound=3.0, timeout=8.0, env=None,
                 allowed_stderr=None, unfixable=None, finding=None, fixed=None):
        assert klass in CLASSES, klass
        self.name = name
        self.upstream = upstream
        self.url = url
        self.project = project
        self.klass = klass
        self.title = title
        self.folder = os.path.join(HERE, name)
        self.source = os.path.join(self.folder, source)
        self.shape = shape
        self.naive = naive
        self.port = port
        self.also = tuple(also)
        self.checks = tuple(checks)
        self.exit_code = exit_code
        self.time_bound = time_bound
        self.timeout = timeout
        self.env = dict(env or {})
        self.allowed_stderr = dict(allowed_stderr or {})
        self.unfixable = unfixable      # a shape exitguard cannot fix, and why
        self.finding = finding          # an open exitguard bug this scenario exposes
        self.fixed = fixed              # an exitguard bug it exposed, and the fix


SCENARIOS = [
    Scenario(
        "cpython_132948_hammer",
        upstream="python/cpython#132948",
        url="https://github.com/python/cpython/issues/132948",
        project="CPython (reported from PyO3)",
        klass="attach",
        title="PyGILState_Ensure from a background thread during finalization",
        source="ext.cpp",
        shape="A thread spawned at import attaches in a loop forever from a frame that must "
              "not unwind (PyO3's extern \"C\"; here a C++ noexcept function); a deep "
              "nested-list cycle at module level makes the final collection slow "
              "(rust-lang/rust#135929's reproducer), so the attach lands inside finalization.",
        naive="pthread_exit unwinds into the nounwind frame: std::terminate (3.9-3.13.7); "
              "crashed on 3.14.0a7; parked since 3.13.8/3.14.",
        port="eg_gil_ensure in the loop; the thread returns at the first -ESHUTDOWN.",
        also=("rust-lang/rust#135929", "PyO3/pyo3#4874"),
        checks=(did_calls, eg_only(threads_ended)),
    ),
    Scenario(
        "cpython_124619_gdbus",
        upstream="python/cpython#124619",
        url="https://github.com/python/cpython/issues/124619",
        project="CPython (reported from PyGObject + GDBus)",
        klass="attach",
        title="PyGILState_Ensure crashes if called after finalization (powerprofilesctl, 3.14.7)",
        source="ext.c",
        shape="A short-lived script asks a bus for one value and exits; the bus library's "
              "worker thread drops the last reference to a proxy from the library's C atexit "
              "handler, after Py_FinalizeEx, and the proxy's Python data is freed there "
              "with PyGILState_Ensure + Py_DECREF.",
        naive="SIGSEGV in PyGILState_Ensure (new_threadstate on a freed interpreter, "
              "3.9-3.13); 3.14 hangs or crashes in PyEval_RestoreThread.",
        port="The proxy's data is an eg_ref (released from any thread; after phase 2 only "
             "memory is freed); the worker's replies attach through eg_gil_ensure.",
        also=("python/cpython#132948", "python/cpython PR #132510"),
        checks=(did_calls, freed_all),
    ),
    Scenario(
        "pytorch_38228_release",
        upstream="pytorch/pytorch#38228",
        url="https://github.com/pytorch/pytorch/issues/38228",
        project="PyTorch",
        klass="terminate",
        title="pybind11::gil_scoped_release: crash on exit with daemon threads",
        source="ext.cpp",
        shape="C++ threads run Python hooks attached and release the GIL in a scoped guard "
              "around native computation; the guard's destructor re-acquires it.  The "
              "script exits while the threads are mid-task.",
        naive="The re-acquire in the destructor meets finalization: pthread_exit's forced "
              "unwind leaves a noexcept destructor -- \"terminate called without an active "
              "exception\", SIGABRT (3.9-3.13.7; since 3.13.8 CPython parks the thread "
              "instead, gh-87135).",
        port="exitguard::thread (stopped and joined in phase 1), exitguard::gil only "
             "around the Python call, refusal is a value; tasks hold exitguard::ref.",
        also=("pytorch/pytorch#38230", "pybind/pybind11#2215"),
        checks=(did_calls, freed_all, eg_only(threads_ended)),
    ),
    Scenario(
        "grpc_39520_join",
        upstream="grpc/grpc#39520",
        url="https://github.com/grpc/grpc/issues/39520",
        project="gRPC",
        klass="pool",
        title="PythonFinalizationError: cannot join thread at interpreter shutdown",
        source="ext.c",
        shape="A channel held by a module global owns a native core thread and a Python "
              "daemon poller thread that waits in native code with the GIL released; "
              "when teardown collects the channel, its deallocation shuts the queue down "
              "and joins both threads.",
        naive="3.14: Thread.join() during finalization raises PythonFinalizationError "
              "(\"Exception ignored\"); older versions join a poller that can no longer "
              "re-enter Python, and calls in flight are never completed.",
        port="An exit stopper does the same shutdown in phase 1, before finalization "
             "(joins with the GIL released); calls hold eg_refs.",
        also=("jumpstarter-dev/jumpstarter#636", "finos/opengris-scaler#935",
              "strands-agents/harness-sdk#2143", "grpc/grpc PR #40447"),
        checks=(did_calls, freed_all, eg_only(threads_ended)),
    ),
    Scenario(
        "grpc_37784_destroy",
        upstream="grpc/grpc PR #37784",
        url="https://github.com/grpc/grpc/pull/37784",
        project="gRPC",
        klass="attach",
        title="Don't grab GIL from C-Core during shutdown",
        source="ext.c",
        shape="A metadata plugin held by the core; the core's executor attaches to ask it "
              "for metadata for every call, and the core's shutdown -- a Py_AtExit hook, "
              "as grpc registers grpc_shutdown -- destroys the credentials on the "
              "executor, whose destroy callback takes the GIL to drop the plugin.",
        naive="The destroy callback takes the GIL while the interpreter is being torn down "
              "(\"may race between GIL destruction during process shutdown\"): a crash at "
              "exit, or a deadlock when the callback blocks (PR #37762's first try).",
        port="The fix as exitguard provides it: the plugin is an eg_ref (its release never "
             "attaches), the metadata callback attaches through eg_gil_ensure and fails the "
             "call on -ESHUTDOWN.",
        also=("grpc/grpc PR #37762", "grpc/grpc PR #6941", "grpc/grpc PR #42247"),
        checks=(did_calls, freed_all),
    ),
    Scenario(
        "arrow_50482_pool",
        upstream="apache/arrow#50482",
        url="https://github.com/apache/arrow/issues/50482",
        project="Apache Arrow",
        klass="pool",
        title="Interpreter hangs at exit after pq.read_table(python_file_object)",
        source="ext.cpp",
        shape="Reading through a Python file object leaves a task holding the file on a "
              "process-lifetime C++ thread pool (a static) after the call returns; the "
              "pool's destructor runs in exit() and joins its workers, and the worker "
              "that drops the file attaches to do it.",
        naive="\"done, exiting...\" is printed, then the process hangs forever (SIGKILL "
              "needed): the static destructor's join waits for a worker stuck in its late "
              "attach (parked since 3.13.8/3.14; arrow#33975 saw the same attach crash).",
        port="The pool's workers are adopted (eg_thread_adopt): phase 1 stops and joins "
             "them before finalization; the file is an exitguard::ref, reads attach with "
             "exitguard::gil.",
        also=("apache/arrow#33975", "apache/arrow#45214"),
        checks=(did_calls, freed_all, eg_only(threads_ended)),
    ),
    Scenario(
        "arrow_38626_import_at_exit",
        upstream="apache/arrow#38626",
        url="https://github.com/apache/arrow/issues/38626",
        project="Apache Arrow",
        klass="late-decref",
        title="Segmentation fault when pyarrow is imported in exit handler",
        source="ext.cpp",
        shape="An exit handler imports the extension for the first time.  It caches objects "
              "in C++ statics whose destructors attach and decref, and registers an atexit "
              "cleanup for them -- which, registered during atexit, never runs; the statics "
              "are destroyed in exit(), after Py_FinalizeEx.",
        naive="PyGILState_Ensure on a freed interpreter from a static destructor: SIGSEGV.",
        port="The statics are exitguard::ref (release is memory-only once exitguard has "
             "stopped, or never could run); no atexit cleanup of its own.",
        also=("apache/arrow PR #38637", "pandas-dev/pandas#55866"),
        checks=(freed_all,),
        fixed="exitguard itself is first imported inside atexit here, and atexit never runs "
              "a callback registered while it runs its callbacks, so neither phase ran: the "
              "static exitguard::ref's release in exit() queued its decref and called "
              "Py_AddPendingCall on the freed interpreter (SIGSEGV on 3.9-3.12; a silent leak "
              "on 3.13+).  Now, when no hook ran it, phase 2 runs in the interpreter's teardown "
              "-- when exitguard's module dict is cleared or the module freed, whichever "
              "comes first (3.9 never frees it); and no decref goes through "
              "Py_AddPendingCall any more (the kicker).",
    ),
    Scenario(
        "viztracer_687_tls",
        upstream="gaogaotiantian/viztracer#687",
        url="https://github.com/gaogaotiantian/viztracer/issues/687",
        project="VizTracer",
        klass="late-decref",
        title="snaptrace_threaddestructor calls PyGILState_Ensure() after interpreter "
              "finalization, causing SIGSEGV",
        source="ext.cpp",
        shape="A tracer keeps per-thread Python metadata in pthread TLS with a destructor "
              "that attaches to free it; the service's native pool is a process-lifetime "
              "static joined by static destructors in exit(), so its threads end -- and run "
              "that destructor -- after Py_RunMain has finalized.",
        naive="Deterministic: every run's TLS destructor attaches to a freed interpreter "
              "(SIGSEGV, exit status 139 after the trace was saved).",
        port="The tracer's per-thread metadata is an eg_ref released with eg_ref_release "
             "(never attaches); the pool's tasks attach through eg_gil_ensure; the pool "
             "stays a static joined in exit().",
        also=("gaogaotiantian/viztracer PR #688", "gaogaotiantian/viztracer PR #699"),
        checks=(did_calls, freed_all),
    ),
    Scenario(
        "pybind11_1598_static",
        upstream="pybind/pybind11#1598",
        url="https://github.com/pybind/pybind11/issues/1598",
        project="pybind11",
        klass="late-decref",
        title="static py::object in C++ function may cause Segfault on exit",
        source="ext.cpp",
        shape="A function keeps the last object it was given in a function-local static "
              "owning holder (py::object's ownership rules); `a = last([])`; the static is "
              "destroyed in exit(), after Py_Finalize, and drops the list's last reference.",
        naive="The list is deallocated after finalization: a segfault at exit.",
        port="The static is an exitguard::ref: phase 2 releases the object, the "
             "destructor in exit() frees memory only.",
        also=("python/cpython#126508", "pybind/pybind11#5270", "pybind/pybind11 PR #4769"),
        checks=(freed_all,),
    ),
    Scenario(
        "cassandra_1287_reactor",
        upstream="apache/cassandra-python-driver PR #1287",
        url="https://github.com/apache/cassandra-python-driver/pull/1287",
        project="cassandra-driver",
        klass="atexit",
        title="Prevent crashes at exit",
        source="ext.c",
        shape="A process-global reactor runs native timer callbacks into Python "
              "(PyGILState_Ensure) on a daemon thread started lazily; its cleanup was "
              "registered at import as atexit.register(partial(_cleanup, _global_loop)) "
              "while _global_loop was None, so it does nothing and the reactor runs into "
              "finalization.",
        naive="The reactor keeps attaching during finalization: killed by pthread_exit "
              "(3.9-3.13.7), parked (3.13.8+), SIGSEGV when the attach lands after the "
              "interpreter is freed; its connections are never released.",
        port="Callbacks attach through eg_gil_ensure; the loop registers its cleanup with "
             "exitguard.exit_stopper when it is created (the registry finds it, whatever "
             "the buggy atexit line captured); phase 1 stops the loop and joins the thread.",
        also=("datahub-project/datahub PR #18933", "scylladb/python-driver#524"),
        checks=(did_calls, threads_ended, freed_all),
    ),
    Scenario(
        "grpc_11804_atexit",
        upstream="grpc/grpc#11804",
        url="https://github.com/grpc/grpc/issues/11804",
        project="gRPC",
        klass="atexit",
        title="Python grpc client causes segfault at interpreter shutdown "
              "(and the atexit design of its fix discussion, grpc PR #17621)",
        source="ext.c",
        shape="A server's daemon poller hands a streaming call to a concurrent.futures "
              "executor; the handler waits in the request iterator for the next message "
              "from the core when the program ends.  The server's stop -- which cancels "
              "the stream -- is registered with atexit, as PR #17621 proposed.",
        naive="The interpreter joins the executor's workers (concurrent.futures' "
              "_python_exit) before atexit runs: the handler waits forever, and so does "
              "the exit (grpc#4969, grpc#5084).",
        port="stop() is an exit stopper (eg_stopper_add): phase 1, before the interpreter "
             "waits for its threads.",
        also=("grpc/grpc PR #17621", "grpc/grpc#4969", "grpc/grpc#5084"),
        checks=(did_calls,),
        fixed="concurrent.futures joins its workers from its own threading._register_atexit "
              "callback (_python_exit, bpo-39812); those callbacks run newest first, and "
              "concurrent.futures.thread is imported lazily, at the first ThreadPoolExecutor -- "
              "after the extension imported exitguard -- so _python_exit ran before "
              "exitguard's phase 1 and waited for a worker only a stopper can release: the exit "
              "hung.  Now exitguard wraps threading._shutdown, so its phase 1 runs before every "
              "_register_atexit callback whatever the import order.",
    ),
    Scenario(
        "spead2_logging",
        upstream="ska-sa/spead2 tests/shutdown.py (test_logging_shutdown)",
        url="https://github.com/ska-sa/spead2/blob/master/tests/shutdown.py",
        project="spead2",
        klass="logging",
        title="Logging thread must be cleaned up at shutdown (the Python 3 shutdown crash "
              "fixed by spead2 commit 95421333)",
        source="ext.cpp",
        shape="C++ code logs 20,000 messages (more than the 1024-slot ring) at a level "
              "logging discards, then the interpreter exits; one native consumer thread "
              "forwards them to logging, holding the GIL except while it waits, so a scoped "
              "guard re-acquires the GIL for every message.",
        naive="The consumer re-acquires the GIL during finalization in the guard's "
              "destructor: std::terminate (3.9-3.13.7); parked with the rest of the messages "
              "undelivered since 3.13.8.",
        port="log_info is eg_log: no thread of our own, no GIL; exitguard drains the ring in "
             "phase 2 and counts what it filtered or dropped.",
        also=("spead2 commit 95421333", "spead2 commit 010ddef4", "vorner/pyo3-log#30"),
        checks=(delivered_all,),
    ),
    Scenario(
        "pycyphal_202_loop_closed",
        upstream="OpenCyphal/pycyphal#202",
        url="https://github.com/OpenCyphal/pycyphal/issues/202",
        project="PyCyphal",
        klass="asyncio",
        title="Worker threads should automatically terminate when the event loop is closed",
        source="ext.c",
        shape="A media driver's native reader thread delivers every frame with "
              "loop.call_soon_threadsafe; asyncio.run() closes the loop and the program "
              "goes on shutting down for a moment while the reader keeps reading.",
        naive="\"RuntimeError: Event loop is closed\" logged with a traceback for every "
              "frame, and the reader still attaches when the interpreter finalizes.",
        port="Frames go to an exitguard.CompletionQueue attached to the loop (eg_cq_post); "
             "what the loop never ran is called cancelled in phase 2; the reader is an "
             "eg_thread stopped in phase 1.",
        also=("OpenCyphal/pycyphal#224", "OpenCyphal/pycyphal PR #324",
              "ramses-rf/ramses_rf PR #824", "python/cpython PR #27688"),
        checks=(delivered_all, eg_only(threads_ended)),
    ),
]


def select(only=""):
    names = [n for n in only.split(",") if n]
    if not names:
        return list(SCENARIOS)
    known = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit("unknown scenario(s): %s" % ", ".join(unknown))
    return [known[n] for n in names]
