"""apache/arrow#50482: read a table through a Python file object, print, exit."""
import importlib
import io
import sys

mod = importlib.import_module(sys.argv[1])

with io.BytesIO(b"PAR1" * 4096) as f:
    f.token = mod.Token()               # freed when the file is: counted
    table = mod.read_table(f)
print("done, exiting...", table.num_rows)
