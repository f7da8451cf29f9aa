"""Logging a message that may repeat without flooding the log (a full disk failing every
commit, a client retrying a refused connection in a loop)."""

from __future__ import annotations

import logging
import time

MAX_KINDS = 64
"""Kinds of message a limiter keeps account of (the oldest is forgotten past that)."""


class RepeatLimiter:
    """Logs a message at once the first time, then at most once per ``interval_s`` for each
    kind of message while it repeats, saying how many were left out (kinds that alternate
    are limited each on its own)."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        level: int = logging.WARNING,
        interval_s: float = 60.0,
    ) -> None:
        self._logger = logger
        self._what = what  # "failed commits": the left-out count is "(N more failed commits...)"
        self._level = level
        self._interval_s = interval_s
        self._kinds: dict[str, list[float]] = {}
        """Per kind: when it was last logged, and how many of it were left out since."""

    def note(self, text: str, kind: str | None = None) -> None:
        """Log ``text`` unless the same ``kind`` of message (by default: the same text) was
        logged less than ``interval_s`` ago; a kind keeps details that vary (a count, a
        key) from defeating the limit."""
        now = time.monotonic()
        kind = text if kind is None else kind
        state = self._kinds.get(kind)
        if state is not None and now - state[0] < self._interval_s:
            state[1] += 1
            return
        left_out = int(state[1]) if state is not None else 0
        extra = f" ({left_out} more {self._what} since the last message)" if left_out else ""
        self._logger.log(self._level, "%s%s", text, extra)
        self._kinds.pop(kind, None)
        self._kinds[kind] = [now, 0]
        if len(self._kinds) > MAX_KINDS:
            del self._kinds[next(iter(self._kinds))]

    def recovered(self, text: str) -> None:
        """The trouble is over: log ``text`` (at INFO) if anything was noted since the last
        recovery, with the count of what was left out, and start afresh."""
        if not self._kinds:
            return
        left_out = int(sum(state[1] for state in self._kinds.values()))
        extra = f" (after {left_out} more {self._what})" if left_out else ""
        self._logger.info("%s%s", text, extra)
        self._kinds.clear()
