"""docs/api.md cannot drift from the header: every declared eg_*/EG_* name is documented."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def declared_names():
    names = set()
    for header in (("include", "exitguard.h"), ("include", "exitguard", "version.h")):
        text = _read(*header)
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)        # drop comments
        names |= set(re.findall(r"\b(eg_[a-z_]+)\s*\(", text))   # functions
        names |= set(re.findall(r"typedef struct \w+ (eg_\w+);", text))
        names |= set(re.findall(r"#\s*define\s+(EG_[A-Z_]+)", text))
        names |= set(re.findall(r"defined\((EG_[A-Z_]+)\)", text))
    # Internal to the header: the table pointer, the build switch and include guard.
    return {n for n in names if not n.startswith(("eg__", "EG__")) and n not in ("EG_BUILDING",)}


def test_every_declared_name_is_documented():
    """Every eg_*/EG_* name the public headers declare is named in docs/api.md."""
    api = _read("docs", "api.md")
    names = declared_names()
    assert "eg_ref_new" in names and "EG_ABI_VERSION" in names   # the parser works
    missing = sorted(n for n in names if not re.search(r"\b%s\b" % re.escape(n), api))
    assert not missing, "undocumented in docs/api.md: %s" % ", ".join(missing)


def test_every_python_name_is_documented():
    """Every name in exitguard.__all__ is named in docs/api.md."""
    import exitguard

    api = _read("docs", "api.md")
    for name in exitguard.__all__:
        assert "exitguard.%s" % name in api or "`%s" % name in api, name


def test_every_errno_the_header_promises_is_named(run_py):
    """eg_strerror names every negative errno (and EG_WAIT_*) the header's contracts promise."""
    text = _read("include", "exitguard.h")
    promised = sorted(set(re.findall(r"-(E[A-Z]{3,})\b", text)))
    assert {"EINVAL", "ESHUTDOWN", "ENOSYS", "EDEADLK"} <= set(promised)   # the parser works
    res = run_py(
        """
        import errno, json, egtest
        names = %r
        print(json.dumps({n: egtest.strerror(-getattr(errno, n)) for n in names}
                         | {"unknown": egtest.strerror(-12345)}))
        """ % (promised,)
    )
    msgs = res.data
    unknown = msgs.pop("unknown")
    unnamed = sorted(n for n, m in msgs.items() if m == unknown)
    assert not unnamed, "eg_strerror has no message for: %s" % ", ".join(unnamed)
