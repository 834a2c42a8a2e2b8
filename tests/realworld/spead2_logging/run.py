"""ska-sa/spead2 tests/shutdown.py test_logging_shutdown, in this project's words:
20,000 messages at a level logging discards, then the interpreter exits."""
import atexit
import importlib
import json
import logging
import sys


def account():
    # Registered first, so it runs last: after exitguard's phase 2, which delivers
    # what is still queued.  exitguard counts what it filtered by level or dropped.
    eg = sys.modules.get("exitguard")
    if eg is not None:
        s = eg.stats()
        print("RWDATA " + json.dumps({
            "delivered": s["log_delivered"] + s["log_filtered"] + s["log_to_stderr"],
            "dropped": s["log_dropped"]}), flush=True)


atexit.register(account)
mod = importlib.import_module(sys.argv[1])
logging.basicConfig(level=logging.ERROR)
for i in range(20000):
    mod.log_info("Test message %d" % i)
