"""gaogaotiantian/viztracer#687: trace a service whose native pool is a static; save; exit."""
import importlib
import sys

mod = importlib.import_module(sys.argv[1])
total = sum(mod.run_in_pool(lambda: sum(range(1000))) for _ in range(30))
mod.save()
print("trace saved", total)
