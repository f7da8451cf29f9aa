"""A writer process for the crash tests (tests/test_replica_crash.py); killed with SIGKILL.

Usage: ``python _replica_crash_child.py DB RUN WRITERS KEYS [POINT:N]``.

``WRITERS`` trio tasks write concurrently through the replica (so commits are grouped). Writer
``w`` performs operations ``i = 1, 2, ...`` on key ``f"{RUN}.{w}/{i % KEYS}"``: a delete when
``i % 5 == 0``, a patch setting ``i`` when ``i % 5 == 3``, otherwise a put of
``{"run", "w", "i", "pad"}``. After each acknowledged write it prints ``ACK w i replica:lo-hi``
(the dots the change took from the counter). With ``POINT:N`` the process kills itself the
N-th time the store reaches ``POINT`` (``applied``, ``flushed``, ``committed``).
"""

from __future__ import annotations

import os
import signal
import sys

import trio

from syncd.replica import Change, open_replica

NS = "crash"


def op_key(run: str, w: int, i: int, keys: int) -> str:
    """The key writer ``w`` touches in its ``i``-th operation."""
    return f"{run}.{w}/{i % keys}"


def op_kind(i: int) -> str:
    """``delete``, ``patch`` or ``put``: what operation ``i`` does."""
    if i % 5 == 0:
        return "delete"
    return "patch" if i % 5 == 3 else "put"


def _dots(replica_id: str, change: Change) -> str:
    if change.dots is None:
        return "-"
    return f"{replica_id}:{change.dots[0]}-{change.dots[1]}"


def _install_crash(replica_store: object, spec: str) -> None:
    point, _, count = spec.partition(":")
    left = [int(count)]

    def hook(reached: str) -> None:
        if reached == point:
            left[0] -= 1
            if left[0] <= 0:
                os.kill(os.getpid(), signal.SIGKILL)

    replica_store.fault_hook = hook  # type: ignore[attr-defined]


async def main(db: str, run: str, writers: int, keys: int, crash: str | None) -> None:
    """Write until killed."""
    # CRASH_LOG_ALWAYS: write every document's changes to its delta log (see doclog.py),
    # which otherwise only large documents use.
    log_always = (
        {"log_min_bytes": 0, "log_max_share": 0} if os.environ.get("CRASH_LOG_ALWAYS") else {}
    )
    async with open_replica(db, **log_always) as replica:
        if crash:
            _install_crash(replica.writer.store, crash)
        print(f"OPEN {replica.replica_id}", flush=True)

        async def writer(w: int) -> None:
            i = 0
            while True:
                i += 1
                key = op_key(run, w, i, keys)
                kind = op_kind(i)
                if kind == "delete":
                    change = await replica.delete(NS, key)
                elif kind == "patch":
                    change = await replica.patch(
                        NS, key, [{"op": "set", "path": ["i"], "value": i}]
                    )
                else:
                    value = {"run": run, "w": w, "i": i, "pad": "x" * (i % 40)}
                    change = await replica.put(NS, key, value)
                print(f"ACK {w} {i} {_dots(replica.replica_id, change)}", flush=True)

        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(writer, w)


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(main, args[0], args[1], int(args[2]), int(args[3]), args[4] if len(args) > 4 else None)
