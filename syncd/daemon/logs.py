"""Logging to stderr: timestamps for a terminal, syslog priorities for the journal.

Under systemd (``$JOURNAL_STREAM`` names stderr), each line starts with ``<N>`` (the syslog
priority journald parses) and carries no timestamp, since the journal adds its own.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LEVELS["error"] = logging.ERROR


class JournalFormatter(logging.Formatter):
    """``<6>syncd.api: message``; every line of a multi-line record gets the prefix."""

    def format(self, record: logging.LogRecord) -> str:
        """Format with the priority prefix on each line."""
        text = super().format(record)
        prefix = f"<{PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in text.splitlines())


def stderr_is_journal(env: Mapping[str, str] | None = None) -> bool:
    """Whether stderr is connected to the journal (``$JOURNAL_STREAM`` is ``dev:inode`` of it)."""
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        dev, ino = (int(x) for x in value.split(":"))
    except ValueError:
        return False  # not what systemd sets: no journal behind it
    try:
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return True  # stderr cannot be checked (closed, replaced): trust the variable
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(level: str, env: Mapping[str, str] | None = None) -> logging.Handler:
    """Send syncd's log records to stderr at ``level``; returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal(env):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("syncd")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.propagate = False
    set_level(level)
    return handler


def set_level(level: str) -> None:
    """Change the level (on SIGHUP reload)."""
    logging.getLogger("syncd").setLevel(LEVELS.get(level, logging.INFO))
