"""apache/arrow#38626: the extension is imported for the first time by an exit handler."""
import atexit
import importlib
import sys

name = sys.argv[1]


def exit_handler():
    importlib.import_module(name)       # "exit handlers might incidentally import pyarrow"


atexit.register(exit_handler)
