"""Helpers imported by scenario scripts (each runs in its own interpreter).

Import this module BEFORE exitguard: the atexit hook it registers then runs after
exitguard's phase 2 (atexit is last-in, first-out), so the report it prints shows
what exitguard did at exit.
"""

import atexit
import json
import sys
import threading

_lock = threading.Lock()
freed = 0
_reports = []


class Tracked:
    """An object that counts its own finalization."""

    __slots__ = ("payload", "__weakref__")

    def __init__(self, payload=None):
        self.payload = payload

    def __del__(self):
        global freed
        with _lock:
            freed += 1


def at_exit(fn):
    """Register fn to add keys to the final report (runs after exitguard's phase 2)."""
    _reports.append(fn)
    return fn


def _final_report():
    data = {"freed": freed}
    for fn in _reports:
        data.update(fn())
    if "exitguard" in sys.modules:
        data["stats"] = sys.modules["exitguard"].stats()
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


atexit.register(_final_report)
