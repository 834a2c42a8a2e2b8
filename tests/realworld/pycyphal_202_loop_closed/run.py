"""OpenCyphal/pycyphal#202: a node runs under asyncio.run(); the media's reader thread
outlives the loop; the process tidies up a little, then exits."""
import asyncio
import importlib
import sys
import time

mod = importlib.import_module(sys.argv[1])
frames = []


async def main():
    mod.Media(asyncio.get_running_loop(), frames.append)
    while len(frames) < 20:             # the node is receiving
        await asyncio.sleep(0.001)


asyncio.run(main())                     # closes the loop
time.sleep(0.05)                        # the rest of the program's shutdown
print("node stopped after", len(frames), "frames")
