"""grpc/grpc#11804 + PR #17621: a server whose streaming handler waits for the next
message when the program ends (the order of grpc's examples: futures, then grpc)."""
from concurrent import futures
import importlib
import sys
import time

mod = importlib.import_module(sys.argv[1])     # "import grpc"
received = []


def handler(request_iterator):
    for msg in request_iterator:
        received.append(msg)


server = mod.Server()
server.start(futures.ThreadPoolExecutor(max_workers=4), handler)
deadline = time.monotonic() + 5
while len(received) < 3 and time.monotonic() < deadline:
    time.sleep(0.001)
print("served", len(received))
