"""Every test says, in its docstring, the property of exitguard it checks (issue 14).

A test whose purpose is only in its name drifts from what its body asserts; one line
stating the claim -- "a native decref is applied once the main thread runs again", not
"tests decref" -- is what a reader checks the body against.  The check parses each
test file with ast (nothing is imported or run): test functions at module level, in
classes and parametrized alike must have a docstring.
"""

import ast
import glob
import os
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
PATTERNS = ["test_*.py", os.path.join("realworld", "test_*.py")]


def _test_files():
    """The test files the check covers, as paths relative to tests/."""
    return sorted(os.path.relpath(p, HERE) for pattern in PATTERNS for p in glob.glob(os.path.join(HERE, pattern)))


# The parser's own check: undocumented tests at module level, parametrized, in a
# class (a docstring of blanks is none) and async are all found; helpers are not.
PLANTED = textwrap.dedent('''
    import pytest

    def test_documented():
        """A documented test."""

    def test_plain():
        assert True

    @pytest.mark.parametrize("x", [1, 2])
    def test_parametrized(x):
        assert x

    class TestGroup:
        def test_method(self):
            """  """

        async def test_async(self):
            pass

    def helper():
        pass
    ''')
PLANTED_MISSING = ["planted.py:7 test_plain", "planted.py:11 test_parametrized",
                   "planted.py:15 test_method", "planted.py:18 test_async"]


def _undocumented_tests(source, filename="<test>"):
    """["file:line name", ...] for each test function in `source` that has no docstring."""
    missing = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            if not (ast.get_docstring(node) or "").strip():
                missing.append("%s:%d %s" % (filename, node.lineno, node.name))
    return missing


def test_every_test_says_the_property_it_checks():
    """Every test function in tests/test_*.py and tests/realworld/test_*.py has a docstring."""
    assert _undocumented_tests(PLANTED, "planted.py") == PLANTED_MISSING     # the parser can fail
    files = _test_files()
    assert "test_test_docs.py" in files and os.path.join("realworld", "test_realworld.py") in files, files
    missing = []
    for name in files:
        with open(os.path.join(HERE, name)) as f:
            missing += _undocumented_tests(f.read(), name)
    assert not missing, ("tests without a docstring saying the property they check (one line, a claim "
                         "about exitguard):\n  " + "\n  ".join(missing))
