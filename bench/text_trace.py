"""Replay the automerge-paper editing trace: syncd's text CRDT against pycrdt (Yrs) and loro.

Every patch of the trace (259,778 single-character inserts and deletes) is one local change
producing one delta, as the daemon does for one client request: with ``--layer document``
(the default) through ``Document.patch(parse_ops(...))``; with ``--layer sequence`` on the
bare :class:`~syncd.crdt.sequence.Sequence` (the delta of a delete is its dead nodes,
``Sequence.subset``). pycrdt runs one transaction per edit, loro one commit per edit. The
final text must equal the trace's ``endContent``.

    python bench/text_trace.py [--repeat N] [--layer document|sequence] [--json]

With ``--json`` the last line of stdout is one JSON object: ``syncd_s``, ``pycrdt_s``,
``loro_s`` (median seconds), ``ratio_pycrdt`` and ``ratio_loro`` (syncd / other),
``final_ok``, ``state_bytes`` (encoded syncd state) and ``loro_snapshot_bytes``. The engines
run round-robin, ``--repeat`` times each (default 3), so that a shared machine's drifting load
hits all alike.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2

import syncd
from syncd.crdt.dots import DotCounter
from syncd.crdt.sequence import Sequence
from syncd.gcpolicy import configure_gc

TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "automerge-paper.json.gz"
DEFAULT_TRACE = Path("/work/shared/data/automerge-paper.json.gz")

Patch = tuple[int, int, str]


def load(path: Path) -> tuple[list[Patch], str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    patches = [(p[0], p[1], p[2]) for t in data["txns"] for p in t["patches"]]
    return patches, data["endContent"]


def run_sequence(patches: list[Patch]) -> tuple[float, str, int]:
    """Replay on a bare Sequence; (seconds, final text, encoded state bytes)."""
    seq = Sequence(True)
    counter = DotCounter("bench-replica")
    gc.collect()
    t0 = time.perf_counter()
    for pos, ndel, ins in patches:
        if ndel:
            seq.subset(seq.delete(pos, ndel))
        if ins:
            seq.insert(pos, ins, counter.replica, counter.take(len(ins)))
    elapsed = time.perf_counter() - t0
    text = seq.value()
    assert isinstance(text, str)
    size = len(cbor2.dumps(seq.to_cbor({counter.replica: 0})))
    return elapsed, text, size


def run_document(patches: list[Patch]) -> tuple[float, str, int]:
    """Replay through Document.patch, as the daemon does; (seconds, final text, bytes)."""
    from syncd.crdt import Document, encode_document, parse_ops

    doc = Document()
    counter = DotCounter("bench-replica")
    doc.patch(parse_ops([{"op": "make", "path": ["text"], "type": "text"}]), counter)
    requests: list[list[dict[str, Any]]] = []
    for pos, ndel, ins in patches:
        ops: list[dict[str, Any]] = []
        if ndel:
            ops.append({"op": "delete", "path": ["text"], "index": pos, "count": ndel})
        if ins:
            ops.append({"op": "insert", "path": ["text"], "index": pos, "text": ins})
        requests.append(ops)
    gc.collect()
    t0 = time.perf_counter()
    for ops in requests:
        doc.patch(parse_ops(ops), counter)
    elapsed = time.perf_counter() - t0
    rendered = doc.render()
    assert rendered is not None
    return elapsed, rendered["text"], len(encode_document(doc))


def run_pycrdt(patches: list[Patch]) -> tuple[float, str, int] | None:
    try:
        import pycrdt
    except ImportError:
        return None
    doc: Any = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    gc.collect()
    t0 = time.perf_counter()
    for pos, ndel, ins in patches:
        with doc.transaction():
            if ndel:
                del text[pos : pos + ndel]
            if ins:
                text.insert(pos, ins)
    elapsed = time.perf_counter() - t0
    return elapsed, str(text), len(doc.get_update())


def run_loro(patches: list[Patch]) -> tuple[float, str, int] | None:
    try:
        import loro as loro_mod
    except ImportError:
        return None
    loro: Any = loro_mod
    doc = loro.LoroDoc()
    text = doc.get_text("text")
    gc.collect()
    t0 = time.perf_counter()
    for pos, ndel, ins in patches:
        if ndel:
            text.delete(pos, ndel)
        if ins:
            text.insert(pos, ins)
        doc.commit()
    elapsed = time.perf_counter() - t0
    return elapsed, text.to_string(), len(doc.export(loro.ExportMode.Snapshot()))


Runner = Callable[[list[Patch]], tuple[float, str, int] | None]


def medians(
    runners: list[Runner], patches: list[Patch], n: int
) -> list[tuple[float, str, int] | None]:
    """Run every engine ``n`` times, round-robin (so that load drifting on a shared machine
    hits all of them alike); per engine the median time and its last text and size."""
    results: list[list[tuple[float, str, int]] | None] = [[] for _ in runners]
    for _ in range(n):
        for i, fn in enumerate(runners):
            got = results[i]
            if got is None:
                continue
            r = fn(patches)
            if r is None:
                results[i] = None
            else:
                got.append(r)
    return [
        None if rs is None else (statistics.median(r[0] for r in rs), rs[-1][1], rs[-1][2])
        for rs in results
    ]


def document_layer_available() -> bool:
    try:
        from syncd.crdt import Document, parse_ops  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--repeat", type=int, default=3, help="runs per engine; report the median")
    ap.add_argument("--layer", choices=["document", "sequence"], default=None)
    ap.add_argument("--trace", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    args = ap.parse_args(argv)
    configure_gc()  # as the daemon does (the peers run under the same settings)
    layer = args.layer or ("document" if document_layer_available() else "sequence")
    trace = args.trace or (TRACE if TRACE.exists() else DEFAULT_TRACE)
    patches, end = load(trace)

    ours_fn = run_document if layer == "document" else run_sequence
    ours, py, lo = medians([ours_fn, run_pycrdt, run_loro], patches, args.repeat)
    assert ours is not None
    syncd_s, syncd_text, state_bytes = ours
    final_ok = syncd_text == end
    n = len(patches)
    print(f"trace: {n} edits, final length {len(end)}; syncd layer: {layer}")
    print(f"syncd  {syncd_s:8.3f} s  {syncd_s / n * 1e6:6.2f} us/edit  state {state_bytes} B")
    if py is not None:
        print(f"pycrdt {py[0]:8.3f} s  {py[0] / n * 1e6:6.2f} us/edit  update {py[2]} B")
    if lo is not None:
        print(f"loro   {lo[0]:8.3f} s  {lo[0] / n * 1e6:6.2f} us/edit  snapshot {lo[2]} B")
    print(f"final text {'matches' if final_ok else 'DIFFERS FROM'} endContent")
    result = {
        "layer": layer,
        "syncd_s": round(syncd_s, 4),
        "pycrdt_s": round(py[0], 4) if py else None,
        "loro_s": round(lo[0], 4) if lo else None,
        "ratio_pycrdt": round(syncd_s / py[0], 4) if py else None,
        "ratio_loro": round(syncd_s / lo[0], 4) if lo else None,
        "final_ok": final_ok,
        "state_bytes": state_bytes,
        "loro_snapshot_bytes": lo[2] if lo else None,
    }
    if args.json:
        print(json.dumps({**result, "compiled": syncd.compiled()}))
    return 0 if final_ok else 1


if __name__ == "__main__":
    sys.exit(main())
