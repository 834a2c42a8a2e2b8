from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["KINDS", "CleanExitError", "ExitReport", "assert_clean_exit", "run_exit"]

KINDS: Tuple[str, ...]

_Stats = Dict[str, Any]

class ExitReport:
    returncode: Optional[int]
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool
    timeout: float
    leak_mode: str
    exit_stats: Optional[Dict[str, Any]]
    interpreters: Optional[List[_Stats]]
    stats: Optional[_Stats]
    def __init__(
        self,
        returncode: Optional[int],
        stdout: str,
        stderr: str,
        elapsed: float,
        exit_stats: Optional[Dict[str, Any]],
        timed_out: bool,
        timeout: float,
        leak_mode: str,
    ) -> None: ...
    def describe(self) -> str: ...
    def problems(
        self, *, expect_returncode: int = ..., allow: Union[str, Iterable[str]] = ...
    ) -> List[Tuple[str, str, str]]: ...
    def check(
        self, *, expect_returncode: int = ..., allow: Union[str, Iterable[str]] = ...
    ) -> "ExitReport": ...

class CleanExitError(AssertionError):
    kind: str
    kinds: List[str]
    report: ExitReport
    def __init__(
        self, kind: str, message: str, report: ExitReport, kinds: Optional[Sequence[str]] = ...
    ) -> None: ...

def run_exit(
    code: str,
    *,
    timeout: float = ...,
    env: Optional[Mapping[str, str]] = ...,
    args: Sequence[str] = ...,
) -> ExitReport: ...
def assert_clean_exit(
    code: str,
    *,
    timeout: float = ...,
    expect_returncode: int = ...,
    env: Optional[Mapping[str, str]] = ...,
    refused_attaches_ok: bool = ...,
    allow: Union[str, Iterable[str]] = ...,
) -> ExitReport: ...
