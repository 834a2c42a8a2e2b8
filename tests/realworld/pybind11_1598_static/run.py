"""pybind/pybind11#1598: `a = last([])`, then exit (a Token rides in the list: counted)."""
import importlib
import sys

mod = importlib.import_module(sys.argv[1])
a = mod.last([mod.Token()])
