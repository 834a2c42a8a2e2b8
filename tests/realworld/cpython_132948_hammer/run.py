"""python/cpython#132948: import an extension whose thread attaches forever, then exit.

The deep nested-list cycle at module level is rust-lang/rust#135929's trick: the
final garbage collection takes a while, so the thread's next attach lands inside
finalization instead of after it."""
import importlib
import sys
import time

mod = importlib.import_module(sys.argv[1])


def make_cycle(depth):
    start = []
    cur = [start]
    for _ in range(depth):
        cur = [cur]
    start.append(cur)
    return start


# A debug build validates every GC list it walks: a tenth of the depth is as slow there.
bomb = make_cycle(30_000 if hasattr(sys, "gettotalrefcount") else 300_000)
while mod.counters()["calls"] < 100:    # the thread is running and attaching
    time.sleep(0.001)               # poll, GIL released
