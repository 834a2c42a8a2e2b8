"""apache/cassandra-python-driver PR #1287: connect, do some work, never shut down."""
import importlib
import sys
import time

mod = importlib.import_module(sys.argv[1])
connections = [mod.Connection(mod.Token()) for _ in range(4)]
while min(c.heartbeats for c in connections) < 20:     # the reactor is running
    time.sleep(0.001)               # poll, GIL released
print("all tests passed")
