"""eg_import(): the capsule check names both versions on a mismatch."""

import os
import textwrap

from conftest import assert_clean

FAKE = '''
import ctypes
class Table(ctypes.Structure):
    _fields_ = [("abi_version", ctypes.c_uint32), ("size", ctypes.c_uint32),
                ("version_hex", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("slots", ctypes.c_void_p * 64)]
_table = Table(%(abi)d, %(size)d, (7 << 16) | (3 << 8) | 1, 0)
# The capsule keeps a pointer to its name: the buffer must live as long as it.
_NAME = ctypes.create_string_buffer(b"exitguard._C_API")
PyCapsule_New = ctypes.pythonapi.PyCapsule_New
PyCapsule_New.restype = ctypes.py_object
PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
_C_API = PyCapsule_New(ctypes.addressof(_table), ctypes.addressof(_NAME), None)
'''


def _fake_pkg(tmp_path, abi, size):
    pkg = tmp_path / "fake" / "exitguard"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE % dict(abi=abi, size=size))
    return str(tmp_path / "fake")


def _import_error(run_py, fake):
    """Import egtest against the fake exitguard; the ImportError message or None."""
    res = run_py(
        """
        import sys, json
        sys.path.insert(0, %r)
        try:
            import egtest
            print(json.dumps({"error": None}))
        except ImportError as e:
            print(json.dumps({"error": str(e)}))
        """ % fake
    )
    assert_clean(res)
    return res.data["error"]


def test_abi_mismatch_raises_importerror_naming_both(run_py, tmp_path):
    """eg_import() raises ImportError naming both ABI versions and both exitguard versions on a mismatch."""
    msg = _import_error(run_py, _fake_pkg(tmp_path, abi=99, size=4096))
    assert msg is not None
    assert "ABI 1" in msg and "ABI 99" in msg, msg
    assert "exitguard 0.1.0" in msg and "exitguard 7.3.1" in msg, msg


def test_smaller_table_is_refused(run_py, tmp_path):
    """eg_import() refuses a C API table smaller than it needs, naming the table's size."""
    assert "table of 16 bytes" in _import_error(run_py, _fake_pkg(tmp_path, abi=1, size=16))


def test_matching_abi_imports(run_py):
    """An extension built against this exitguard imports, and its ABI version equals the runtime's."""
    res = run_py("import egtest, exitguard, json; print(json.dumps({'abi': egtest.ABI_VERSION, 'runtime': exitguard.ABI_VERSION}))")
    assert_clean(res)
    assert res.data["abi"] == res.data["runtime"]
