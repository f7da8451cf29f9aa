"""Crash tests: writer processes killed with SIGKILL, at random moments and mid-batch.

After every kill the database is reopened and checked: SQLite integrity, the namespace
context equals the union of the documents' contexts, the dot index matches
(``check_database``); every acknowledged write is present (or superseded only
by the one write that was in flight); earlier runs' documents are untouched; and no dot was
ever handed out twice, across all runs (each acknowledgement reports its dots).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from syncd.replica import Store
from syncd.replica.verify import check_database
from tests._replica_crash_child import NS, op_key, op_kind

CHILD = Path(__file__).with_name("_replica_crash_child.py")
WRITERS = 8
KEYS = 6
POINTS = ("applied", "flushed", "committed")


@dataclass
class History:
    """What the parent knows across runs."""

    db: Path
    expected: dict[str, Any] = field(default_factory=dict)  # key -> state seen last time
    dots: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)  # -> (key, ack)
    replica_ids: set[str] = field(default_factory=set)


@dataclass
class Run:
    """One child's output."""

    replica_id: str
    last_ack: dict[int, int]
    acked_dots: list[tuple[str, int, int, str, str]]  # (replica, lo, hi, key, ack)


def run_child(
    db: Path, run: str, *, kill_after: int | None, crash: str | None, log_always: bool = False
) -> Run:
    """Start a writer, kill it after ``kill_after`` acks (or let it crash itself)."""
    args = [sys.executable, str(CHILD), str(db), run, str(WRITERS), str(KEYS)]
    if crash:
        args.append(crash)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if log_always:
        env["CRASH_LOG_ALWAYS"] = "1"
    replica_id = ""
    last_ack: dict[int, int] = {}
    dots: list[tuple[str, int, int, str, str]] = []
    acks = 0
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            for line in proc.stdout:
                if not line.endswith("\n"):
                    break  # a torn last line cannot be an acknowledgement the writer saw
                parts = line.split()
                if parts[0] == "OPEN":
                    replica_id = parts[1]
                    continue
                assert parts[0] == "ACK", line
                w, i = int(parts[1]), int(parts[2])
                assert last_ack.get(w, 0) == i - 1, "a writer's acks are sequential"
                last_ack[w] = i
                acks += 1
                if parts[3] != "-":
                    replica, _, span = parts[3].rpartition(":")
                    lo, _, hi = span.partition("-")
                    key = op_key(run, w, i, KEYS)
                    dots.append((replica, int(lo), int(hi), key, f"{run}/{w}/{i}"))
                if kill_after is not None and acks == kill_after:
                    proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            stderr = proc.stderr.read()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, stderr
    assert replica_id, stderr
    return Run(replica_id, last_ack, dots)


def state_after(run: str, w: int, i: int) -> Any:
    """What writer ``w`` of ``run`` leaves its key with after operation ``i`` (0: nothing)."""
    if i == 0 or op_kind(i) == "delete":
        return None
    if op_kind(i) == "patch":
        return ("patch", i)
    return {"run": run, "w": w, "i": i, "pad": "x" * (i % 40)}


def matches(value: Any, state: Any) -> bool:
    if isinstance(state, tuple):
        return value is not None and value.get("i") == state[1]
    return bool(value == state)


def verify(history: History, run: str, result: Run) -> None:
    """Everything the module docstring promises, after one killed run."""
    assert result.replica_id not in history.replica_ids, "replica id reused"
    history.replica_ids.add(result.replica_id)
    assert check_database(history.db) == []  # as the kill left it, before any repair
    with Store(history.db) as store:  # reopening runs WAL recovery
        ids_now = {store.replica_id}
        assert not ids_now & history.replica_ids
        # Earlier runs' documents are exactly as they were.
        for key, value in history.expected.items():
            assert store.get(NS, key).value == value, key
        # Every acknowledged write is there, or the one in flight after it.
        for w in range(WRITERS):
            acked = result.last_ack.get(w, 0)
            inflight = acked + 1
            for slot in range(KEYS):
                key = op_key(run, w, slot, KEYS)
                last = max((i for i in range(acked + 1) if i % KEYS == slot), default=0)
                value = store.get(NS, key).value
                ok = matches(value, state_after(run, w, last))
                if inflight % KEYS == slot:
                    ok = ok or matches(value, state_after(run, w, inflight))
                assert ok, (key, value, last, inflight)
                history.expected[key] = value
        # Every acknowledged change's dots are in its document, and no dot served twice.
        for replica, lo, hi, key, ack in result.acked_dots:
            doc = store.document(NS, key)
            assert doc is not None
            for n in range(lo, hi + 1):
                assert doc.ctx.has(replica, n), (key, replica, n)
                prev = history.dots.setdefault((replica, n), (key, ack))
                assert prev == (key, ack), f"dot {replica}:{n} reused: {prev} and {(key, ack)}"
    assert check_database(history.db) == []


def crash_loop(tmp_path: Path, kills: int, seed: int, log_always: bool = False) -> None:
    rng = random.Random(seed)
    history = History(tmp_path / "replica.sqlite3")
    for n in range(kills):
        run = f"r{n}"
        if n % 2 == 0:
            kill_after = rng.randint(1, 300)
            result = run_child(
                history.db, run, kill_after=kill_after, crash=None, log_always=log_always
            )
        else:
            crash = f"{POINTS[(n // 2) % 3]}:{rng.randint(1, 200)}"
            result = run_child(history.db, run, kill_after=None, crash=crash, log_always=log_always)
        verify(history, run, result)


def test_sigkill_at_random_points_and_mid_batch(tmp_path: Path) -> None:
    crash_loop(tmp_path, kills=40, seed=1)


def test_sigkill_with_every_change_in_delta_logs(tmp_path: Path) -> None:
    # The same, with every document kept as a base plus logged deltas (folded every 64).
    crash_loop(tmp_path, kills=24, seed=3, log_always=True)


@pytest.mark.slow
def test_sigkill_many_times(tmp_path: Path) -> None:
    crash_loop(tmp_path, kills=120, seed=2)


def test_restored_backup_never_reuses_dots(tmp_path: Path) -> None:
    """A database copied back from an older backup hands out no dot twice."""
    history = History(tmp_path / "replica.sqlite3")
    verify(history, "a", run_child(history.db, "a", kill_after=50, crash=None))
    backup = tmp_path / "backup"
    backup.mkdir()
    for f in tmp_path.glob("replica.sqlite3*"):
        shutil.copy2(f, backup / f.name)
    verify(history, "b", run_child(history.db, "b", kill_after=80, crash=None))
    for f in tmp_path.glob("replica.sqlite3*"):
        f.unlink()
    for f in backup.iterdir():
        shutil.copy2(f, tmp_path / f.name)
    # Run "b"'s documents are gone with the restore; forget them, keep their dots.
    history.expected = {k: v for k, v in history.expected.items() if not k.startswith("b.")}
    verify(history, "c", run_child(history.db, "c", kill_after=80, crash=None))
