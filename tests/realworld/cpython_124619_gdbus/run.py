"""python/cpython#124619 (powerprofilesctl): ask the bus for one value, print it, exit."""
import importlib
import sys

mod = importlib.import_module(sys.argv[1])
mod.connect()
proxy = mod.Proxy(mod.Token())          # the proxy's Python-side data
print(proxy.get("ActiveProfile"))
