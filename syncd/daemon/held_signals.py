"""Signals that reach ``syncd run`` while the daemon is not listening for them.

``syncd run`` calls :func:`hold_signals` first thing, before its slow imports. From then on
SIGTERM, SIGINT and SIGHUP are recorded instead of killing the process: one that comes while
the daemon starts (before it listens with trio) is acted on once it is ready
(:func:`take_held_signals`), and one that comes after it stopped listening (a second SIGTERM
during shutdown, which trio delivers again when its receiver closes) is ignored, so the exit
status stays 0. Kept free of heavy imports on purpose.
"""

from __future__ import annotations

import signal

HELD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_held: list[int] = []


def hold_signals() -> None:
    """Record SIGTERM, SIGINT and SIGHUP from now on (main thread only)."""
    for signum in HELD:
        signal.signal(signum, _record)


def take_held_signals() -> list[int]:
    """The signals recorded so far, oldest first, and forget them."""
    taken, _held[:] = list(_held), []
    return taken


def _record(signum: int, _frame: object) -> None:
    _held.append(signum)
