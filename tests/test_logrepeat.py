"""The repeat limiter that keeps a repeating failure from flooding the log."""

from __future__ import annotations

import logging

import pytest

from syncd.logrepeat import RepeatLimiter


def test_a_repeated_message_is_logged_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("syncd.logrepeat.time.monotonic", lambda: clock[0])
    limiter = RepeatLimiter(logging.getLogger("t"), "refusals", interval_s=60)
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(5):
            limiter.note("refused uid 7")
        limiter.note("disk full")  # a different message: at once
        limiter.note("disk full")
        clock[0] += 61
        limiter.note("disk full")  # the interval passed: logged, with what was left out
    assert [r.getMessage() for r in caplog.records] == [
        "refused uid 7",
        "disk full",
        "disk full (1 more refusals since the last message)",
    ]


def test_recovery_is_logged_once_after_trouble_and_resets(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RepeatLimiter(logging.getLogger("t"), "failures")
    with caplog.at_level(logging.INFO, logger="t"):
        limiter.recovered("fine again")  # nothing went wrong: nothing said
        limiter.note("disk full")
        limiter.note("disk full")
        limiter.note("disk full")
        limiter.recovered("fine again")
        limiter.recovered("fine again")  # said once
        limiter.note("disk full")  # a new episode is logged at once, not left out
    assert [r.getMessage() for r in caplog.records] == [
        "disk full",
        "fine again (after 2 more failures)",
        "disk full",
    ]


def test_a_kind_keeps_varying_details_from_defeating_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = RepeatLimiter(logging.getLogger("t"), "failures")
    with caplog.at_level(logging.WARNING, logger="t"):
        for open_connections in (5, 6, 7):
            limiter.note(f"out of files ({open_connections} open)", kind="EMFILE")
        limiter.note("disk full")
        for _ in range(3):  # two kinds that alternate are each limited
            limiter.note("read failed: k1", kind="corrupt")
            limiter.note("read failed: k2", kind="io")
    assert [r.getMessage() for r in caplog.records] == [
        "out of files (5 open)",
        "disk full",
        "read failed: k1",
        "read failed: k2",
    ]
