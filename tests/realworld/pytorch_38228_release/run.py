"""pytorch/pytorch#38228: native threads mid-task (GIL released in a scoped guard) at exit."""
import importlib
import sys
import time

mod = importlib.import_module(sys.argv[1])
mod.start(4)
done = []
for _ in range(20000):                   # far more than can finish before the end
    mod.submit(lambda: done.append(1))
while len(done) < 20:                    # the device threads are busy
    time.sleep(0.001)               # poll, GIL released
