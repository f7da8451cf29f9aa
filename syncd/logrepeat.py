"""Logging a message that may repeat without flooding the log (a full disk failing every
commit, a client retrying a refused connection in a loop)."""

from __future__ import annotations

import logging
import time


class RepeatLimiter:
    """Logs a message at once the first time and whenever it changes, then at most once per
    ``interval_s`` while it repeats, saying how many were left out."""

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
        self._last = ""  # the kind of the message logged last
        self._last_text = ""
        self._last_logged = -float("inf")
        self._unlogged = 0

    def note(self, text: str, kind: str | None = None) -> None:
        """Log ``text`` unless the same ``kind`` of message (by default: the same text) was
        logged less than ``interval_s`` ago; a kind keeps details that vary (a count, a
        key) from defeating the limit."""
        now = time.monotonic()
        kind = text if kind is None else kind
        if kind == self._last and now - self._last_logged < self._interval_s:
            self._unlogged += 1
            return
        left_out, self._unlogged = self._unlogged, 0
        if left_out and kind != self._last:  # close the account of the previous message
            self._logger.log(self._level, "%s (%d more %s)", self._last_text, left_out, self._what)
            left_out = 0
        extra = f" ({left_out} more {self._what} since the last message)" if left_out else ""
        self._logger.log(self._level, "%s%s", text, extra)
        self._last, self._last_text, self._last_logged = kind, text, now

    def recovered(self, text: str) -> None:
        """The trouble is over: log ``text`` (at INFO) if anything was noted since the last
        recovery, with the count of what was left out, and start afresh."""
        if not self._last:
            return
        left_out, self._unlogged = self._unlogged, 0
        extra = f" (after {left_out} more {self._what})" if left_out else ""
        self._logger.info("%s%s", text, extra)
        self._last, self._last_logged = "", -float("inf")
