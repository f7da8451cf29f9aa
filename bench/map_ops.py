"""Map benchmark: 100k field sets, one-field delta sizes (also after concurrent history), merge.

Every set goes through ``Document.patch`` and yields its delta, as in the daemon. pycrdt
(Yrs) runs the same workload in the same process when it is installed.

    python bench/map_ops.py [--fields N] [--history N] [--repeat R] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import syncd
from syncd.crdt import Document, DotCounter, encode_document, parse_ops
from syncd.gcpolicy import configure_gc


def syncd_set_fields(n: int) -> tuple[float, Document, DotCounter]:
    doc: Document = Document()
    counter = DotCounter("bench-replica-a")
    ops = [parse_ops([{"op": "set", "path": [f"field{i}"], "value": i}]) for i in range(n)]
    t0 = time.perf_counter()
    for o in ops:
        doc.patch(o, counter)
    return time.perf_counter() - t0, doc, counter


def syncd_put_fields(n: int) -> float:
    """All fields in one put (one delta)."""
    doc, counter = Document(), DotCounter("bench-replica-a")
    value = {f"field{i}": i for i in range(n)}
    t0 = time.perf_counter()
    doc.put(value, counter)
    return time.perf_counter() - t0


def pycrdt_set_fields(n: int) -> float | None:
    try:
        import pycrdt
    except ImportError:
        return None
    doc: Any = pycrdt.Doc()
    m = doc.get("m", type=pycrdt.Map)
    t0 = time.perf_counter()
    for i in range(n):
        with doc.transaction():
            m[f"field{i}"] = i
    return time.perf_counter() - t0


def one_field_delta(doc: Document, counter: DotCounter, field: str) -> int:
    delta = doc.patch(parse_ops([{"op": "set", "path": [field], "value": "new value"}]), counter)
    return len(encode_document(delta))


def history(n_fields: int, writes: int) -> tuple[int, float, int | None]:
    """Two replicas write ``writes`` times each to overlapping fields, then merge."""
    a: Document = Document()
    ca = DotCounter("bench-replica-a")
    a.put({f"field{i}": 0 for i in range(n_fields)}, ca)
    b: Document = a.copy()
    cb = DotCounter("bench-replica-b")
    for i in range(writes):
        a.patch(parse_ops([{"op": "set", "path": [f"field{i % n_fields}"], "value": i}]), ca)
        b.patch(parse_ops([{"op": "set", "path": [f"field{(i * 7) % n_fields}"], "value": -i}]), cb)
    t0 = time.perf_counter()
    a.join(b)
    merge_s = time.perf_counter() - t0
    size = one_field_delta(a, ca, "field3")
    return size, merge_s, pycrdt_history(n_fields, writes)


def pycrdt_history(n_fields: int, writes: int) -> int | None:
    try:
        import pycrdt
    except ImportError:
        return None
    a: Any = pycrdt.Doc(client_id=1)
    ma = a.get("m", type=pycrdt.Map)
    with a.transaction():
        for i in range(n_fields):
            ma[f"field{i}"] = 0
    b: Any = pycrdt.Doc(client_id=2)
    b.apply_update(a.get_update())
    mb = b.get("m", type=pycrdt.Map)
    for i in range(writes):
        with a.transaction():
            ma[f"field{i % n_fields}"] = i
        with b.transaction():
            mb[f"field{(i * 7) % n_fields}"] = -i
    a.apply_update(b.get_update(a.get_state()))
    before = a.get_state()
    with a.transaction():
        ma["field3"] = "new value"
    return len(a.get_update(before))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fields", type=int, default=100_000)
    p.add_argument("--history", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    configure_gc()  # as the daemon does

    ours, theirs, one_put = [], [], []
    for _ in range(args.repeat):
        one_put.append(syncd_put_fields(args.fields))
        s, doc, counter = syncd_set_fields(args.fields)
        ours.append(s)
        t = pycrdt_set_fields(args.fields)
        if t is not None:
            theirs.append(t)
    delta_bytes = one_field_delta(doc, counter, "field77")
    after, merge_s, pycrdt_after = history(1000, args.history)
    result: dict[str, Any] = {
        "set_100k_s": round(statistics.median(ours), 4),
        "pycrdt_set_100k_s": round(statistics.median(theirs), 4) if theirs else None,
        "put_100k_s": round(statistics.median(one_put), 4),
        "delta_bytes": delta_bytes,
        "delta_bytes_after_history": after,
        "pycrdt_delta_bytes_after_history": pycrdt_after,
        "merge_s": round(merge_s, 4),
        "fields": args.fields,
        "history_writes_per_replica": args.history,
    }
    if not args.json:
        for k, v in result.items():
            print(f"{k:36} {v}")
    print(json.dumps({**result, "compiled": syncd.compiled()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
