# pyright: strict
"""A small user of exitguard's Python API, fully annotated.

`make check-packaging` type-checks it with mypy --strict and pyright against the
installed package (its stubs), and runs it in a fresh virtual environment as the
smoke test of the built wheel and sdist: it exits 0 and prints "typed user: ok".
"""

import asyncio
import os
import threading
from typing import Dict, List, Union

import exitguard
from exitguard.testing import CleanExitError, ExitReport, assert_clean_exit


def build_flags() -> List[str]:
    folders: List[str] = [exitguard.get_include(), exitguard.get_cmake_dir(), exitguard.get_pkgconfig_dir()]
    for folder in folders:
        assert os.path.isdir(folder), folder
    return ["-I" + exitguard.get_include()]


def stop_workers() -> exitguard.ExitStopper:
    stop = threading.Event()

    def worker() -> None:
        while not stop.wait(0.01):
            pass

    threading.Thread(target=worker).start()
    first: exitguard.ExitStopper = exitguard.exit_stopper(stop.set)
    second = exitguard.exit_stopper(print, "typed user: stopping", flush=True)
    first.after(second)
    assert first.active and not first.ran and first.callback == stop.set
    return first


def event_wait() -> bool:
    ev = exitguard.Event()
    ev.set()
    fd: int = ev.fileno()
    assert fd >= 0 and ev.is_set()
    return ev.wait(0.1)


async def completions() -> Dict[str, Union[int, bool]]:
    q = exitguard.CompletionQueue()
    q.attach(asyncio.get_running_loop())
    q.detach()
    q.close()
    return q.stats()


def counters() -> int:
    stats: Dict[str, Union[int, str]] = exitguard.stats()
    applied = stats["decref_applied"]
    assert isinstance(applied, int)
    return applied + exitguard.flush()


def clean_exit_check() -> ExitReport:
    report = assert_clean_exit("import exitguard; exitguard.exit_stopper(print, 'child stopping')", timeout=60.0)
    try:
        assert_clean_exit("import os; os._exit(3)", timeout=60.0)
    except CleanExitError as e:
        assert e.kind == "exit code" and e.report.returncode == 3
    return report


def main() -> None:
    assert exitguard.__version__ and exitguard.ABI_VERSION >= 1 and exitguard.LEAK_EXIT_STATUS == 70
    build_flags()
    stop_workers()
    assert event_wait()
    assert asyncio.run(completions())["closed"] is True
    assert counters() >= 0
    assert exitguard.state() == "running"
    assert clean_exit_check().returncode == 0
    print("typed user: ok", flush=True)


if __name__ == "__main__":
    main()
