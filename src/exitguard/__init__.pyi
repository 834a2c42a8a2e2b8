from typing import Any, Callable

from ._core import ABI_VERSION as ABI_VERSION
from ._core import LEAK_EXIT_STATUS as LEAK_EXIT_STATUS
from ._core import CompletionQueue as CompletionQueue
from ._core import Event as Event
from ._core import ExitStopper as ExitStopper
from ._core import StoppingError as StoppingError
from ._core import __version__ as __version__
from ._core import flush as flush
from ._core import state as state
from ._core import stats as stats

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

def exit_stopper(callback: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ExitStopper: ...
def get_include() -> str: ...
def get_cmake_dir() -> str: ...
def get_pkgconfig_dir() -> str: ...
def valgrind_suppressions() -> str: ...
