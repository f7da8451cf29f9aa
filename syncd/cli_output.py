"""How the CLI shows daemon results: human-readable text, or the raw result with ``--json``."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from syncd.errors import SyncdError


class OutputError(SyncdError):
    """Standard output is closed or cannot be written (a full disk): exit status 1.

    A broken pipe (``syncd ls | head -1``) is not one: ``BrokenPipeError`` passes through, and
    the CLI ends quietly.
    """

    reason = "output"


@contextmanager
def _stdout() -> Iterator[TextIO]:
    stream = sys.stdout
    if stream is None:  # started with stdout closed (`>&-`)
        raise OutputError("cannot write output: standard output is closed")
    try:
        yield stream
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write output: {exc.strerror or exc}") from None


def write(text: str) -> None:
    """Write ``text`` to stdout (raises :class:`OutputError`)."""
    with _stdout() as out:
        out.write(text)


def flush() -> None:
    """Flush stdout, so that a late write error is the command's (raises :class:`OutputError`)."""
    if sys.stdout is not None:
        with _stdout() as out:
            out.flush()


def json_text(obj: Any, **options: Any) -> str:
    """JSON that stays on its lines for every reader: non-ASCII text as it is, but U+2028 and
    U+2029 escaped (valid raw inside JSON strings, yet line breaks to ``str.splitlines`` and to
    JavaScript before ES2019), as are DEL and the C1 controls (they upset terminals)."""
    return json.dumps(obj, ensure_ascii=False, **options).translate(_ESCAPED)


_ESCAPED = {c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}


def print_json(obj: Any) -> None:
    """One line of JSON on stdout."""
    write(json_text(obj) + "\n")


def shown(name: str, *, cell: bool = False) -> str:
    """A key or namespace name for human output, one line and unambiguous: as it is, unless
    it holds a control or line-separator character or starts with ``"`` (or, in a ``cell``
    of a table or an item of a comma-separated list, holds white space or a comma); then as a
    JSON string (so a name shown quoted always starts with ``"``, and ``--json`` output is
    exact anyway)."""
    if (
        name.startswith('"')
        or any(c < " " or ord(c) in _ESCAPED for c in name)
        or (cell and any(c.isspace() or c == "," for c in name))
    ):
        return json_text(name)  # (C0 controls JSON escapes itself; _ESCAPED the others)
    return name


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    head = "  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()
    return "\n".join([head, *lines])


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "never"
    try:
        return datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")
    except (OverflowError, ValueError, OSError):  # NaN, 1e20: not a time
        return "?"


RESULTS: dict[str, Any] = {
    "status": {
        "device_id": str,
        "name": str,
        "version": str,
        "listen": str,
        "peers_connected": int,
        "namespaces": [str],
    },
    "peers": {"peers": [{"id": str, "addresses": [str]}], "pending": [dict]},
    "ns": {"namespaces": [{"ns": str, "documents": int, "devices": [str]}]},
    "get": {"exists": bool},
    "ls": {"keys": [str]},
    "sync": {"acked_by": [str], "pending": [str]},
    "del": {"existed": bool},
}
"""What the output of each command relies on in the daemon's result (the contract's shapes;
other members are allowed): a dict names required members, a one-item list is a list of
such items. Any other command's result must be an object."""


def fits(value: Any, spec: Any) -> bool:
    """Whether ``value`` has the shape ``spec`` (see :data:`RESULTS`)."""
    if isinstance(spec, dict):
        return isinstance(value, dict) and all(
            k in value and fits(value[k], sub) for k, sub in spec.items()
        )
    if isinstance(spec, list):
        return isinstance(value, list) and all(fits(item, spec[0]) for item in value)
    if spec is int:
        return type(value) is int
    return isinstance(value, spec)


def _status(r: dict[str, Any]) -> str:
    ns = r.get("namespaces") or []
    problems = r.get("problems")
    lines = [
        f"device ID:   {r['device_id']}",
        f"name:        {r['name']}",
        f"version:     {r['version']}",
        f"listen:      {r['listen']}",
        f"peers:       {r['peers_connected']} connected",
        f"namespaces:  {', '.join(shown(n, cell=True) for n in ns) if ns else '(none)'}",
    ]
    if isinstance(problems, list):
        lines += [f"problem:     {shown(str(p))}" for p in problems]
    return "\n".join(lines)


def _peers(r: dict[str, Any]) -> str:
    out = []
    peers = r.get("peers") or []
    if peers:
        rows = [
            [
                p["id"],
                p.get("name") or "-",
                "yes" if p.get("trusted") else "no",
                "yes" if p.get("connected") else "no",
                ",".join(p.get("addresses") or []) or "dynamic",
                _when(p.get("last_seen")),
            ]
            for p in peers
        ]
        out.append(_table(rows, ["ID", "NAME", "TRUSTED", "CONNECTED", "ADDRESSES", "LAST SEEN"]))
    else:
        out.append("no known devices (add one with `syncd trust ID`)")
    pending = r.get("pending") or []
    if pending:
        out.append("")
        out.append("pending (not trusted):")
        for p in pending:
            out.append(
                f"  {p.get('id')}  {p.get('name') or '-'}  {p.get('address') or ''}".rstrip()
            )
    return "\n".join(out)


def _namespaces(r: dict[str, Any]) -> str:
    items = r.get("namespaces") or []
    if not items:
        return "no namespaces"
    rows = [
        [shown(n["ns"], cell=True), str(n["documents"]), ", ".join(n["devices"]) or "-"]
        for n in items
    ]
    return _table(rows, ["NAMESPACE", "DOCUMENTS", "SHARED WITH"])


def _get(args: argparse.Namespace, result: dict[str, Any]) -> int:
    """``get`` prints the document itself as JSON (indented, or one line with ``--json``).

    With ``--conflicts`` it prints ``{"value": DOCUMENT, "conflicts": [{path, values}]}``
    instead, so stdout is always one JSON value. A missing document: exit 1 with one line on
    stderr (and ``null`` on stdout with ``--json``).
    """
    if not result.get("exists"):
        if args.json:
            print_json(None)
        sys.stderr.write(f"syncd: no document {args.key!r} in namespace {args.ns!r}\n")
        return 1
    out: Any = result.get("value")
    if args.conflicts:
        out = {"value": out, "conflicts": result.get("conflicts") or []}
    if args.json:
        print_json(out)
    else:
        write(json_text(out, indent=2, sort_keys=True) + "\n")
    return 0


def show(args: argparse.Namespace, result: Any) -> int:
    """Print ``result`` of ``args.command``; return the exit status."""
    cmd = args.command
    if cmd == "get" and isinstance(result, dict):
        return _get(args, result)
    if cmd == "sync" and isinstance(result, dict) and result.get("pending"):
        if args.json:
            print_json(result)
        sys.stderr.write(f"syncd: timed out; not acknowledged by: {', '.join(result['pending'])}\n")
        return 1
    if args.json:
        print_json(result)
        return 0
    text = _human(cmd, args, result)
    if text:
        write(text + "\n")
    return 0


def _human(cmd: str, args: argparse.Namespace, r: Any) -> str:
    if cmd == "status":
        return _status(r)
    if cmd == "peers":
        return _peers(r)
    if cmd == "ns":
        return _namespaces(r)
    if cmd == "ls":
        return "\n".join(map(shown, r["keys"]))
    if cmd == "sync":
        acked = r.get("acked_by") or []
        if not acked:
            return f"no connected device shares {args.ns!r}; nothing to wait for"
        return f"acknowledged by {len(acked)} device(s): {', '.join(acked)}"
    if cmd == "del" and not r.get("existed"):
        sys.stderr.write(f"syncd: {args.key!r} did not exist in {args.ns!r}\n")
    return ""
