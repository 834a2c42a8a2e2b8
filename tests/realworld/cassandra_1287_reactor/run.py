"""apache/cassandra-python-driver PR #1287: connect, do some work, never shut down."""
import importlib
import sys

mod = importlib.import_module(sys.argv[1])
connections = [mod.Connection(mod.Token()) for _ in range(4)]
while min(c.heartbeats for c in connections) < 20:     # the reactor is running
    pass
print("all tests passed")
