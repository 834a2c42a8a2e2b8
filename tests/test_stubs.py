"""The type stubs describe the runtime: every public name, and every class member, on both sides.

src/exitguard/__init__.pyi (re-exporting _core.pyi, the C extension's) and testing.pyi
are what mypy and pyright see (the package ships py.typed); this compares them with
dir() of the imported modules.  Signatures are
checked by `make check-packaging` (mypy's stubtest, mypy --strict and pyright on a typed
user script).
"""

import ast
import importlib
import os
import types

import pytest

import exitguard

PKG = os.path.dirname(exitguard.__file__)


def _stub(module):
    """{name: ast node} of the top-level definitions in the module's .pyi."""
    path = os.path.join(PKG, ("__init__" if module == "exitguard" else module.split(".")[-1]) + ".pyi")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    names[t.id] = node
        elif isinstance(node, ast.ImportFrom) and node.module not in ("typing", "types"):
            # `from ._core import X as X`: an explicit re-export.
            for alias in node.names:
                if alias.asname == alias.name:
                    names[alias.name] = node
    return names


def _public(names):
    # Dunders other than the API's own are the interpreter's (__doc__, __file__, ...).
    return {n for n in names if not n.startswith("_") or n in ("__version__", "__all__")}


def _members(cls_node):
    out = set()
    for node in cls_node.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return out


def _runtime_members(cls):
    own = set()
    for klass in cls.__mro__:
        if klass in (object, BaseException, Exception, RuntimeError, AssertionError, SystemExit):
            break
        own |= set(vars(klass))
    return own


def _report():
    from exitguard.testing import ExitReport

    return ExitReport(0, "", "", 0.0, None, False, 60.0, "abort")


def _error():
    from exitguard.testing import CleanExitError

    return CleanExitError("crash", "message", _report())


# Classes whose instances carry attributes of their own: how to make one.
SAMPLES = {"ExitReport": _report, "CleanExitError": _error}


MODULES = ["exitguard", "exitguard._core", "exitguard.testing"]


@pytest.mark.parametrize("module", MODULES)
def test_stub_names_match_the_runtime(module):
    """Each module's .pyi names exactly its public runtime names, and the stub's __all__ is the runtime's."""
    mod = importlib.import_module(module)
    stub = _stub(module)
    runtime = {n for n in _public(dir(mod)) if not isinstance(getattr(mod, n), types.ModuleType)}
    assert sorted(runtime - set(stub)) == [], "in %s but not in its stub" % module
    assert sorted(_public(stub) - runtime) == [], "in the stub of %s but not at run time" % module
    if hasattr(mod, "__all__"):
        node = stub["__all__"]
        assert isinstance(node, ast.Assign), "%s: the stub's __all__ must be a literal list" % module
        assert ast.literal_eval(node.value) == list(mod.__all__), module
        assert set(mod.__all__) <= set(stub), sorted(set(mod.__all__) - set(stub))


@pytest.mark.parametrize("module", MODULES)
def test_stub_classes_match_the_runtime(module):
    """Each class in a .pyi has exactly the public members of the runtime class."""
    mod = importlib.import_module(module)
    for name, node in _stub(module).items():
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(mod, name)
        stubbed = {m for m in _members(node) if not m.startswith("_")}
        runtime = {m for m in _runtime_members(cls) if not m.startswith("_")}
        if name in SAMPLES:
            # Attributes set in __init__ live on the instance, not the class.
            runtime |= {m for m in vars(SAMPLES[name]()) if not m.startswith("_")}
        assert sorted(runtime - stubbed) == [], "%s.%s: public members missing from the stub" % (module, name)
        assert sorted(stubbed - runtime) == [], "%s.%s: stubbed members missing at run time" % (module, name)
        for dunder in ("__init__", "__enter__", "__exit__"):
            if dunder in _members(node):
                assert dunder in dir(cls), "%s.%s.%s" % (module, name, dunder)

