"""The ``syncd`` command line: ``syncd [--home DIR] [--json] COMMAND ...``.

Exit status: 0 success; 1 the operation failed (the daemon's error, a missing document, a
sync that timed out, a daemon that cannot start); 2 bad usage (unknown option, invalid JSON
argument, mistyped device ID); 3 no daemon is listening on the socket. Errors are one line on
stderr, ``syncd: ...``. docs/cli.md is the user's reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from syncd import __version__
from syncd.cli_output import print_json, show
from syncd.client import Client, ClientError, DaemonNotRunning, RemoteError
from syncd.config import ConfigError, default_name, load_config, parse_listen
from syncd.errors import SyncdError
from syncd.identity import InvalidDeviceId, identity_exists, load_identity, parse_device_id
from syncd.paths import Paths, resolve_paths

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_DAEMON = 0, 1, 2, 3


class UsageError(SyncdError):
    """Bad command-line input (exit status 2)."""

    reason = "usage"


class Failed(SyncdError):
    """The command ran but did not succeed (exit status 1); already explained."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``syncd: message`` and exit 2."""
        sys.stderr.write(f"syncd: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> Parser:
    """The argument parser of every command."""
    p = Parser(prog="syncd", description="Peer-to-peer sync daemon.")
    p.add_argument("--version", action="version", version=f"syncd {__version__}")
    p.add_argument("--home", metavar="DIR", help="instance directory (env SYNCD_HOME)")
    p.add_argument("--socket", metavar="PATH", help="API socket to connect to (env SYNCD_SOCKET)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)

    c = sub.add_parser("init", help="create identity and config")
    c.add_argument("--name", help="device name (default: host name)")
    c.add_argument("--listen", metavar="HOST:PORT", help="address for peer connections")
    c = sub.add_parser("run", help="run the daemon in the foreground")
    c.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub.add_parser("id", help="print this device's ID")
    sub.add_parser("status", help="daemon status")
    sub.add_parser("peers", help="known and pending devices")
    c = sub.add_parser("trust", help="trust a device")
    c.add_argument("device_id", metavar="ID")
    c.add_argument("--name")
    c.add_argument("--addr", action="append", default=[], metavar="HOST:PORT")
    c = sub.add_parser("untrust", help="forget a device")
    c.add_argument("device_id", metavar="ID")
    for name in ("share", "unshare"):
        c = sub.add_parser(name, help=f"{name} a namespace with devices")
        c.add_argument("ns", metavar="NS")
        c.add_argument("devices", metavar="ID", nargs="+")
    sub.add_parser("ns", help="namespaces, their devices and document counts")
    c = sub.add_parser("get", help="print a document")
    c.add_argument("ns", metavar="NS")
    c.add_argument("key", metavar="KEY")
    c.add_argument("--conflicts", action="store_true", help="also list concurrent values")
    c = sub.add_parser("put", help="make a document equal to JSON (`-`: stdin)")
    c.add_argument("ns", metavar="NS")
    c.add_argument("key", metavar="KEY")
    c.add_argument("value", metavar="JSON")
    c = sub.add_parser("patch", help="apply operations (`-`: stdin)")
    c.add_argument("ns", metavar="NS")
    c.add_argument("key", metavar="KEY")
    c.add_argument("ops", metavar="OPS_JSON")
    c = sub.add_parser("del", help="delete a document")
    c.add_argument("ns", metavar="NS")
    c.add_argument("key", metavar="KEY")
    c = sub.add_parser("ls", help="list keys")
    c.add_argument("ns", metavar="NS")
    c.add_argument("prefix", metavar="PREFIX", nargs="?", default="")
    c = sub.add_parser("watch", help="stream changes as JSON lines")
    c.add_argument("ns", metavar="NS")
    c.add_argument("prefix", metavar="PREFIX", nargs="?", default="")
    c.add_argument("--initial", action="store_true", help="start with the current documents")
    c = sub.add_parser("sync", help="wait until connected peers have acknowledged")
    c.add_argument("ns", metavar="NS")
    c.add_argument("--timeout", type=float, default=30.0, metavar="S")
    c = sub.add_parser("folder", help="keep a folder in sync with a namespace")
    c.add_argument("action", choices=["add", "ls", "rm"])
    c.add_argument("args", nargs="*")
    return p


def _json_arg(text: str, what: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None


def _device(text: str) -> str:
    try:
        return parse_device_id(text)
    except InvalidDeviceId as exc:
        raise UsageError(str(exc)) from None


def _client(paths: Paths) -> Client:
    return Client(paths.socket)


def cmd_init(args: argparse.Namespace, paths: Paths) -> int:
    """``syncd init``."""
    from syncd.daemon.run import prepare_home, write_initial_config

    listen = args.listen or "0.0.0.0:7400"
    try:
        parse_listen(listen)
    except ValueError as exc:
        raise UsageError(f"--listen {listen!r}: {exc}") from None
    if identity_exists(paths.state_dir):
        identity = load_identity(paths.state_dir)
        if args.json:
            print_json({"device_id": identity.device_id, "created": False})
        else:
            print(identity.device_id)
            sys.stderr.write(f"syncd: already initialized in {paths.state_dir}; nothing changed\n")
        return EXIT_OK
    identity, _created = prepare_home(paths)
    write_initial_config(paths, args.name or default_name(), listen)
    load_config(paths.config_file)  # prove the file we wrote is valid
    if args.json:
        print_json(
            {"device_id": identity.device_id, "created": True, "config": str(paths.config_file)}
        )
    else:
        print(identity.device_id)
        sys.stderr.write(f"syncd: created identity in {paths.state_dir} and {paths.config_file}\n")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, paths: Paths) -> int:
    """``syncd run``."""
    import trio

    from syncd.daemon.logs import setup_logging
    from syncd.daemon.replica_store import open_store
    from syncd.daemon.run import run_daemon

    setup_logging(args.log_level or "info")
    try:
        return trio.run(
            lambda: run_daemon(paths, store_factory=open_store, log_level=args.log_level)
        )
    except BaseExceptionGroup as group:
        # A start-up failure inside the daemon's nursery: report the first deliberate error.
        matched, _rest = group.split(SyncdError)
        if matched is None:
            raise
        raise _first_leaf(matched) from None


def _first_leaf(group: BaseExceptionGroup[SyncdError]) -> SyncdError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def cmd_id(args: argparse.Namespace, paths: Paths) -> int:
    """``syncd id``: no daemon needed."""
    identity = load_identity(paths.state_dir)
    if args.json:
        print_json({"device_id": identity.device_id})
    else:
        print(identity.device_id)
    return EXIT_OK


def cmd_watch(args: argparse.Namespace, paths: Paths) -> int:
    """``syncd watch``: one JSON line per change; resubscribes after an overflow."""
    with _client(paths) as client:
        client.watch(args.ns, args.prefix, args.initial)
        for msg in client.notifications():
            params = msg.get("params") or {}
            if msg.get("method") == "overflow":
                sys.stderr.write("syncd: watch fell behind; resending the current documents\n")
                client.watch(args.ns, args.prefix, True)
                continue
            params.pop("subscription", None)
            sys.stdout.write(json.dumps(params, ensure_ascii=False) + "\n")
            sys.stdout.flush()
    return EXIT_OK


def request_for(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The JSON-RPC (method, params) of a daemon command; checks local input first."""
    cmd = args.command
    simple = {"status": "status", "peers": "peers", "ns": "namespaces"}
    if cmd in simple:
        return simple[cmd], {}
    if cmd == "trust":
        addrs = []
        for addr in args.addr:
            try:
                parse_listen(addr)
            except ValueError as exc:
                raise UsageError(f"--addr {addr!r}: {exc}") from None
            addrs.append(addr)
        params: dict[str, Any] = {"device_id": _device(args.device_id), "addresses": addrs}
        if args.name:
            params["name"] = args.name
        return "trust", params
    if cmd == "untrust":
        return "untrust", {"device_id": _device(args.device_id)}
    if cmd in ("share", "unshare"):
        return cmd, {"ns": args.ns, "devices": [_device(d) for d in args.devices]}
    if cmd == "get":
        params = {"ns": args.ns, "key": args.key}
        if args.conflicts:
            params["conflicts"] = True
        return "get", params
    if cmd == "put":
        return "put", {"ns": args.ns, "key": args.key, "value": _json_arg(args.value, "JSON")}
    if cmd == "patch":
        return "patch", {"ns": args.ns, "key": args.key, "ops": _json_arg(args.ops, "OPS_JSON")}
    if cmd == "del":
        return "delete", {"ns": args.ns, "key": args.key}
    if cmd == "ls":
        return "list", {"ns": args.ns, "prefix": args.prefix}
    if cmd == "sync":
        if not 0 <= args.timeout <= 86400:
            raise UsageError("--timeout must be between 0 and 86400 seconds")
        return "sync", {"ns": args.ns, "timeout_s": args.timeout}
    raise UsageError(f"unknown command {cmd!r}")


LOCAL: dict[str, Callable[[argparse.Namespace, Paths], int]] = {
    "init": cmd_init,
    "run": cmd_run,
    "id": cmd_id,
    "watch": cmd_watch,
}


def _dispatch(args: argparse.Namespace, paths: Paths) -> int:
    if args.command in LOCAL:
        return LOCAL[args.command](args, paths)
    if args.command == "folder":
        raise SyncdError("`syncd folder` is not available in this version yet")
    method, params = request_for(args)  # usage errors win over a missing daemon
    with _client(paths) as client:
        result = client.call(method, **params)
    return show(args, result)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    paths = resolve_paths(args.home, socket=args.socket)
    try:
        return _dispatch(args, paths)
    except UsageError as exc:
        return _fail(exc, EXIT_USAGE)
    except DaemonNotRunning as exc:
        return _fail(exc, EXIT_NO_DAEMON)
    except RemoteError as exc:
        return _fail(exc, EXIT_FAILED)
    except Failed:
        return EXIT_FAILED
    except (ClientError, ConfigError, SyncdError) as exc:
        return _fail(exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK


def _fail(exc: Exception, status: int) -> int:
    message = " ".join(str(exc).split())
    sys.stderr.write(f"syncd: {message}\n")
    return status


def _silence_stdout() -> None:
    """After EPIPE on stdout (``syncd ls | head``), avoid a second error at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
