"""``python -m exitguard``: where exitguard's headers and build files are, for build systems.

Each option prints one line on stdout and exits 0:

  --version       the release, e.g. ``0.1.0``: that of the installed package, of the
                  headers it ships (``EG_VERSION_STRING``), of its CMake package and
                  of its pkg-config file -- one build writes all four
  --abi           the capsule ABI (``EG_ABI_VERSION``) the headers are built for
  --includes      ``-I`` flags for everything ``#include <exitguard.h>`` needs:
                  exitguard's include folder, then Python's
  --cflags        exitguard's own flags only (``-I`` its include folder), as
                  ``pkg-config --cflags exitguard`` prints them
  --includedir    the include folder (``exitguard.get_include()``)
  --cmakedir      the CMake package folder (``exitguard.get_cmake_dir()``)
  --pkgconfigdir  the folder holding exitguard.pc (``exitguard.get_pkgconfig_dir()``)

Exactly one option per call: a script that needs two asks twice.
"""

import argparse
import shlex
import sys
import sysconfig
from typing import Callable, Dict, List, Optional

import exitguard


def _python_includes() -> List[str]:
    """Python's include folders, in the order its own config lists them, without repeats."""
    dirs = []
    for key in ("include", "platinclude"):
        path = sysconfig.get_paths().get(key)
        if path and path not in dirs:
            dirs.append(path)
    return dirs


def _flags(dirs: List[str]) -> str:
    return " ".join("-I" + shlex.quote(d) for d in dirs)


_QUERIES: Dict[str, Callable[[], str]] = {
    "version": lambda: exitguard.__version__,
    "abi": lambda: str(exitguard.ABI_VERSION),
    "includes": lambda: _flags([exitguard.get_include()] + _python_includes()),
    "cflags": lambda: _flags([exitguard.get_include()]),
    "includedir": exitguard.get_include,
    "cmakedir": exitguard.get_cmake_dir,
    "pkgconfigdir": exitguard.get_pkgconfig_dir,
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exitguard",
        description="Print where exitguard's C API headers and build-system files are.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--version", dest="query", action="store_const", const="version",
                       help="the release of the installed package and of its headers")
    group.add_argument("--abi", dest="query", action="store_const", const="abi",
                       help="the capsule ABI version the headers are built for")
    group.add_argument("--includes", dest="query", action="store_const", const="includes",
                       help="-I flags for exitguard's headers and Python's")
    group.add_argument("--cflags", dest="query", action="store_const", const="cflags",
                       help="exitguard's own compiler flags (as pkg-config prints them)")
    group.add_argument("--includedir", dest="query", action="store_const", const="includedir",
                       help="the folder holding exitguard.h")
    group.add_argument("--cmakedir", dest="query", action="store_const", const="cmakedir",
                       help="the folder holding exitguardConfig.cmake (exitguard_DIR)")
    group.add_argument("--pkgconfigdir", dest="query", action="store_const", const="pkgconfigdir",
                       help="the folder holding exitguard.pc (for PKG_CONFIG_PATH)")
    args = parser.parse_args(argv)
    sys.stdout.write(_QUERIES[args.query]() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
