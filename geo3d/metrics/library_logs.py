"""Counting instead of printing the log lines RDKit and PoseBusters write while geo3d builds and scores molecules.

Sanitising generated molecules makes RDKit write a line per failure ("Explicit
valence for atom # 12 C, 5, is greater than permitted") straight to stderr from
C++, and PoseBusters log a warning per molecule its energy-ratio check cannot
embed. Hundreds of such lines bury the metric table and say nothing the table
does not (validity, ``pb_*`` rates). :func:`captured_library_logs` routes both
to Python logging for its duration, counts the lines instead of printing them
and gives RDKit its C++ streams back when the outermost block ends (blocks nest:
an outer block's counts include an inner one's).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

from rdkit import rdBase

LOGGERS = {"rdkit": "rdkit", "posebusters": "posebusters"}  # counter key -> Python logger name
_depth = 0  # open captured_library_logs blocks; RDKit's log target is process-wide


class _Counting(logging.Handler):
    def __init__(self, key: str, counts: Counter) -> None:
        super().__init__(level=logging.WARNING)
        self.key, self.counts = key, counts

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[self.key] += 1


@contextmanager
def captured_library_logs() -> Iterator[Counter]:
    """Within the block, RDKit and PoseBusters warnings and errors are counted
    (``counts["rdkit"]``, ``counts["posebusters"]``) and not printed."""
    global _depth
    counts: Counter = Counter({key: 0 for key in LOGGERS})
    saved = []
    if _depth == 0:
        rdBase.LogToPythonLogger()
    _depth += 1
    try:
        for key, name in LOGGERS.items():
            log = logging.getLogger(name)
            handler = _Counting(key, counts)
            saved.append((log, log.handlers, log.propagate, log.level))
            # rdkit's logger comes with its own stderr handler: set it aside (an outer block's
            # counting handlers stay, so its counts include this block's)
            log.handlers = [*log.handlers, handler] if _depth > 1 else [handler]
            log.propagate = False
            log.setLevel(logging.WARNING)  # warnings and errors: what would have been printed
        yield counts
    finally:
        for log, handlers, propagate, level in reversed(saved):
            log.handlers, log.propagate, log.level = handlers, propagate, level
        _depth -= 1
        if _depth == 0:
            rdBase.LogToCppStreams()


def counting_library_logs(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Decorator: run ``fn`` (which returns a metrics dict) under :func:`captured_library_logs` and
    add the counts to its result as ``rdkit_log_lines`` and ``posebusters_log_lines``."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> dict[str, Any]:
        with captured_library_logs() as counts:
            out = fn(*args, **kwargs)
        out["rdkit_log_lines"] = counts["rdkit"]
        out["posebusters_log_lines"] = counts["posebusters"]
        return out

    return wrapper
