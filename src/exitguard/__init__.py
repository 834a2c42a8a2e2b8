"""exitguard: keep CPython extensions safe around the GIL and interpreter shutdown.

The C core lives in :mod:`exitguard._core`; this package re-exports its Python
API and adds the helpers that need no C.  Extensions use the C API through
``#include <exitguard.h>`` (see :func:`get_include`); build systems find the headers
through :func:`get_cmake_dir` (CMake), :func:`get_pkgconfig_dir` (pkg-config, meson)
or ``python -m exitguard --includes``.
"""

import os as _os

from ._core import (  # noqa: F401  (re-exported API)
    CompletionQueue,
    Event,
    StoppingError,
    ABI_VERSION,
    LEAK_EXIT_STATUS,
    ExitStopper,
    __version__,
    _C_API,
    flush,
    state,
    stats,
)

__all__ = [
    "CompletionQueue",
    "Event",
    "ExitStopper",
    "StoppingError",
    "exit_stopper",
    "flush",
    "get_cmake_dir",
    "get_include",
    "get_pkgconfig_dir",
    "state",
    "stats",
    "valgrind_suppressions",
    "__version__",
]


def _quiet_stopping_threads():
    """Let a thread ended by :class:`StoppingError` end quietly.

    threading's default excepthook stays silent only for ``SystemExit`` itself,
    not for its subclasses; this wraps whatever ``threading.excepthook`` is set
    when exitguard is imported, once per interpreter, so that a thread whose
    wait phase 1 ended prints no traceback.  A hook installed later replaces
    this one (and then sees StoppingError like any other exception).
    """
    import threading

    prev = threading.excepthook
    if getattr(prev, "_exitguard_quiet", False):
        return

    def excepthook(args, /):
        if args.exc_type is not None and issubclass(args.exc_type, StoppingError):
            return
        prev(args)

    excepthook._exitguard_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = excepthook


_quiet_stopping_threads()


def exit_stopper(callback, /, *args, **kwargs):
    """Run ``callback(*args, **kwargs)`` at exit, before non-daemon threads are joined.

    Returns an :class:`ExitStopper`; call its ``cancel()`` (or use it as a
    context manager) when the work it stops has ended by other means.  The
    callback runs on the thread that runs the interpreter's exit (normally
    the main thread) in exitguard's phase 1; stoppers run newest first.
    Raises ``TypeError`` if ``callback`` is not callable.
    """
    return ExitStopper(callback, *args, **kwargs)


def valgrind_suppressions():
    """Return the path of exitguard's valgrind suppression file (for memcheck runs)."""
    return _os.path.join(_os.path.dirname(__file__), "valgrind.supp")


def get_include():
    """Return the folder that holds ``exitguard.h``, for extension builds."""
    return _os.path.join(_os.path.dirname(__file__), "include")


def get_cmake_dir():
    """Return the folder that holds ``exitguardConfig.cmake``.

    Pass it as ``-Dexitguard_DIR=...`` (or add it to ``CMAKE_PREFIX_PATH``) so that
    ``find_package(exitguard CONFIG)`` defines the target ``exitguard::exitguard``;
    scikit-build-core finds it without help.
    """
    return _os.path.join(_os.path.dirname(__file__), "cmake")


def get_pkgconfig_dir():
    """Return the folder that holds ``exitguard.pc``, for ``PKG_CONFIG_PATH``.

    With it on ``PKG_CONFIG_PATH``, ``pkg-config --cflags exitguard`` and meson's
    ``dependency('exitguard')`` find the headers.
    """
    return _os.path.join(_os.path.dirname(__file__), "pkgconfig")
