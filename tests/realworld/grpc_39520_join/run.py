"""grpc/grpc#39520: a channel held by a module global; calls still in flight at exit."""
import importlib
import sys
import time

mod = importlib.import_module(sys.argv[1])
results = []
channel = mod.Channel(results.append)    # collected at interpreter teardown
for _ in range(200):
    channel.call(mod.Token())
while len(results) < 10:                 # the poller is delivering
    time.sleep(0.001)               # poll, GIL released
