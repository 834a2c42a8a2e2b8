"""grpc/grpc PR #37784: a channel with a metadata plugin, never closed; the program's
calls have all completed when it ends."""
import importlib
import sys
import time

mod = importlib.import_module(sys.argv[1])


class AuthPlugin:
    def __init__(self):
        self.token = mod.Token()        # freed with the plugin: counted
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return (("authorization", "Bearer x"),)


plugin = AuthPlugin()
mod.secure_channel(plugin)
mod.call(20)
while plugin.calls < 20:
    time.sleep(0.001)               # poll, GIL released
