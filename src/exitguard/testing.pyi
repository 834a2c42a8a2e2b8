from typing import Dict, Mapping, Optional, Union

__all__ = ["CleanExitError", "ExitReport", "assert_clean_exit"]

class ExitReport:
    returncode: Optional[int]
    stdout: str
    stderr: str
    elapsed: float
    stats: Optional[Dict[str, Union[int, str]]]
    timed_out: bool
    def __init__(
        self,
        returncode: Optional[int],
        stdout: str,
        stderr: str,
        elapsed: float,
        stats: Optional[Dict[str, Union[int, str]]],
        timed_out: bool,
    ) -> None: ...

class CleanExitError(AssertionError):
    kind: str
    report: ExitReport
    def __init__(self, kind: str, message: str, report: ExitReport) -> None: ...

def assert_clean_exit(
    code: str,
    *,
    timeout: float = ...,
    expect_returncode: int = ...,
    env: Optional[Mapping[str, str]] = ...,
    refused_attaches_ok: bool = ...,
) -> ExitReport: ...
