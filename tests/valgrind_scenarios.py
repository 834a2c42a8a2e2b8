"""Scenarios for `make valgrind`: exitguard's paths, under memcheck, ending mid-work.

Small sizes (valgrind runs ~50x slower); no deliberate leaks.  Run as
`python -m exitguard.leakcheck -- python tests/valgrind_scenarios.py`.
"""
import asyncio
import logging
import threading

import exitguard
import egtest
import ticker

logging.basicConfig(level=logging.INFO)


class Item:
    pass


# Native references and deferred decrefs, released from native threads.
hs = [egtest.ref_new(Item()) for _ in range(500)]
egtest.release_in_threads(hs, 2)
egtest.decref_in_threads([Item() for _ in range(500)], 2)
exitguard.flush()
held = [egtest.ref_new(Item()) for _ in range(10)]     # released by phase 2

# Native threads attaching, logging, an exit stopper, an event, completions.
egtest.log_from_threads(2, 50)
t = ticker.Ticker(2, spin=100, on_tick=lambda n: None, tick_every=10)
t.feed_many(Item() for _ in range(2000))
stop = threading.Event()
worker = threading.Thread(target=stop.wait)
worker.start()
exitguard.exit_stopper(stop.set)
ev = exitguard.Event()
ev.set()
ev.wait(1)


async def main():
    loop = asyncio.get_running_loop()
    q = exitguard.CompletionQueue()
    q.attach(loop)
    egtest.cq_post_many(q, 200, 2)
    await asyncio.sleep(0.05)
    q.detach()
    q.close()


asyncio.run(main())
# The script ends here with the ticker's threads still working.
