"""The ``syncd`` command line: ``syncd [--home DIR] [--json] COMMAND ...``.

Exit status: 0 success; 1 the operation failed (the daemon's error, a missing document, a
sync that timed out, a daemon that cannot start); 2 bad usage (unknown option, invalid JSON
argument, mistyped device ID); 3 no daemon is listening on the socket; 130 interrupted (except
``watch``, which ends with 0 on SIGINT/SIGTERM). Errors are one line on stderr, ``syncd: ...``.
``--json get`` prints the document itself. docs/cli.md is the user's reference.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from syncd import __version__, jsontext
from syncd.cli_output import (
    RESULTS,
    OutputError,
    fits,
    flush,
    json_text,
    print_json,
    show,
    write,
)
from syncd.client import Client, ClientError, DaemonNotRunning, RemoteError
from syncd.config import (
    MAX_ADDRESSES,
    Config,
    ConfigError,
    check_device_name,
    default_name,
    load_config,
    parse_listen,
)
from syncd.deviceid import InvalidDeviceId, parse_device_id
from syncd.errors import InvalidOperation, PatchError, SyncdError
from syncd.names import name_problem
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

    def _print_message(self, message: str, file: Any = None) -> None:
        # argparse ignores write errors; --help and --version output that cannot be written
        # fails the command as any other output does (OutputError: exit 1).
        if file is sys.stdout and message:
            write(message)
            flush()
        else:
            super()._print_message(message, file)


_AFTER = "_after_command"
"""The suffix of the destinations of the global options given after the command."""


def _global_options(p: argparse.ArgumentParser, *, after: bool) -> None:
    """``--home``, ``--socket``, ``--json``: documented before the command, tolerated after it."""
    default: Any = argparse.SUPPRESS if after else None
    suffix = _AFTER if after else ""  # (merged by _merge_global_options)
    p.add_argument(
        "--home",
        metavar="DIR",
        dest="home" + suffix,
        default=default,
        help="instance directory (env SYNCD_HOME)",
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        dest="socket" + suffix,
        default=default,
        help="API socket to connect to (env SYNCD_SOCKET)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if after else False,
        help="machine-readable output",
    )


def _merge_global_options(args: argparse.Namespace) -> None:
    """Take ``--home``/``--socket`` given after the command; the same option given before it
    with another value is an error (rather than one of them silently ignored)."""
    for option in ("home", "socket"):
        after = getattr(args, option + _AFTER, None)
        if after is None:
            continue
        delattr(args, option + _AFTER)
        before = getattr(args, option)
        if before is not None and before != after:
            raise UsageError(
                f"--{option} given twice with different values ({before!r} before the "
                f"command, {after!r} after it)"
            )
        setattr(args, option, after)


class _SubParser(Parser):
    """A command's parser: also accepts the global options (after the command)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _global_options(self, after=True)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """Report an unknown argument after the command here, so that the message points at
        ``syncd COMMAND --help`` (the top-level parser would only know ``syncd --help``)."""
        parsed, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra


class _RunOption(argparse.Action):
    """``syncd --log-level debug run``: say where the option belongs, rather than take
    ``debug`` for an unknown command."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} is an option of `run`: write `syncd run {option_string} LEVEL`"
        )


def build_parser() -> Parser:
    """The argument parser of every command."""
    p = Parser(prog="syncd", description="Peer-to-peer sync daemon.")
    p.add_argument("--version", action="version", version=f"syncd {__version__}")
    p.add_argument("--log-level", action=_RunOption, nargs="?", help=argparse.SUPPRESS)
    _global_options(p, after=False)
    sub = p.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_SubParser
    )

    c = sub.add_parser("init", help="create identity and config")
    c.add_argument("--name", help="device name (default: host name)")
    c.add_argument("--listen", metavar="HOST:PORT", help="address for peer connections")
    c = sub.add_parser("run", help="run the daemon in the foreground")
    c.add_argument("--log-level", type=str.lower, choices=["debug", "info", "warning", "error"])
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
    c = sub.add_parser("folder", help="keep a folder in sync with a namespace (not yet)")
    folder = c.add_subparsers(
        dest="folder_command", metavar="ACTION", required=True, parser_class=_SubParser
    )
    f = folder.add_parser("add", help="sync folder PATH with namespace NS")
    f.add_argument("ns", metavar="NS")
    f.add_argument("path", metavar="PATH")
    folder.add_parser("ls", help="list synced folders")
    f = folder.add_parser("rm", help="stop syncing the folder of namespace NS")
    f.add_argument("ns", metavar="NS")
    return p


def _json_arg(
    text: str, what: str, kind: type[dict[str, Any]] | type[list[Any]]
) -> tuple[Any, str]:
    """Parse a JSON argument (``-``: stdin) that must be an object or an array; returns the
    value and how to name the argument in messages.

    Only JSON the daemon can use passes: no NaN/Infinity, no float that overflows to infinity
    (``1e400``), no lone surrogate, raw or escaped (``"\\udcff"``).
    """
    where = what
    if text == "-":
        where = f"{what} (from stdin)"
        text = _read_stdin(where)
    if not text.strip():
        raise UsageError(f"{where} is empty")
    if jsontext.has_lone_surrogate(text):
        raise UsageError(f"{where} is not valid UTF-8 text")
    try:
        value = jsontext.loads(text)
    except RecursionError:
        raise UsageError(f"{where} is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where} is not valid JSON: {exc}") from None
    except ValueError as exc:  # NaN, Infinity, 1e400: valid syntax the daemon cannot take
        raise UsageError(f"{where}: {exc}") from None
    if not isinstance(value, kind):
        expected = "a JSON object" if kind is dict else "a JSON array"
        raise UsageError(f"{where} must be {expected}, not {_json_type(value)}")
    return value, where


def _document_arg(text: str) -> dict[str, Any]:
    """``put``'s JSON: an object a document can hold (checked as the daemon checks it)."""
    value: dict[str, Any]
    value, where = _json_arg(text, "the document", dict)
    from syncd.crdt.ops import check_value  # here: the CRDT engine takes a while to import

    try:
        check_value(value, where)
    except (InvalidOperation, PatchError) as exc:
        raise UsageError(str(exc)) from None
    _check_unicode(value, where)
    return value


def _ops_arg(text: str) -> list[Any]:
    """``patch``'s JSON: an array of well-formed operations (checked as the daemon checks it)."""
    ops: list[Any]
    ops, where = _json_arg(text, "the operation list", list)
    from syncd.crdt.ops import parse_ops  # here: the CRDT engine takes a while to import

    try:
        parse_ops(ops)
    except (InvalidOperation, PatchError) as exc:
        raise UsageError(f"{where}: {exc}") from None
    _check_unicode(ops, where)
    return ops


def _check_unicode(value: Any, where: str) -> None:
    if jsontext.has_lone_surrogate(value):
        raise UsageError(
            f"{where} is not valid Unicode text: it escapes a lone surrogate (\\ud800-\\udfff)"
        )


def _read_stdin(where: str) -> str:
    """All of stdin, decoded as strict UTF-8 (whatever the locale says)."""
    if sys.stdin is None:  # started with stdin closed (`<&-`)
        raise UsageError(f"{where}: standard input is closed")
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream without bytes underneath (tests)
        return sys.stdin.read()
    try:
        return bytes(buffer.read()).decode("utf-8-sig")  # a leading BOM is tolerated
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where} is not valid UTF-8: {exc}") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _device_name(text: str, option: str) -> str:
    """A device name as config.toml accepts it: 1-256 printable characters."""
    if jsontext.has_lone_surrogate(text):  # bytes that are not UTF-8, escaped by Python
        raise UsageError(f"{option} is not valid UTF-8 text")
    try:
        return check_device_name(text)
    except ValueError as exc:
        raise UsageError(f"{option} {text!r}: {exc}") from None


def _device(text: str) -> str:
    try:
        return parse_device_id(text)
    except InvalidDeviceId as exc:
        raise UsageError(str(exc)) from None


def _client(paths: Paths) -> Client:
    return Client(paths.socket)


def _note(text: str) -> None:
    sys.stderr.write(f"syncd: {text}\n")


def cmd_init(args: argparse.Namespace, paths: Paths) -> int:
    """``syncd init``."""
    from syncd.daemon.run import home_setup_lock, make_private_dir
    from syncd.identity import identity_exists

    listen = "0.0.0.0:7400" if args.listen is None else args.listen
    try:
        parse_listen(listen)
    except ValueError as exc:
        raise UsageError(f"--listen {listen!r}: {exc}") from None
    name = default_name() if args.name is None else _device_name(args.name, "--name")
    if not identity_exists(paths.state_dir):
        if paths.config_file.exists():
            load_config(paths.config_file)  # a bad hand-written file stops us before anything
        make_private_dir(paths.state_dir, report=_note)
    with home_setup_lock(paths):  # (another init, or a first `run`, may be making it now)
        if identity_exists(paths.state_dir):
            return _init_again(args, paths, name, listen)
        return _init_new(args, paths, name, listen)


def _init_again(args: argparse.Namespace, paths: Paths, name: str, listen: str) -> int:
    """``syncd init`` on an initialized home."""
    from syncd.identity import load_identity

    # Run again: nothing changes, except what an init cut short (a full disk) left
    # unmade; done before anything is printed, so that a failure is not told as success.
    identity = load_identity(paths.state_dir)
    config_file = paths.config_file
    had_config = config_file.exists() or config_file.is_symlink()  # (a dangling link)
    completed = []
    if identity.certificate_reissued:
        completed.append(f"re-issued the certificate {identity.cert_path} from the key")
    if not had_config:
        _write_config(paths, name, listen)
        completed.append(f"wrote the missing {config_file}")
    if not paths.database.exists():
        _create_database(paths)
        completed.append(f"created the missing database {paths.database}")
    if args.json:
        print_json({"device_id": identity.device_id, "created": False})
    else:
        write(identity.device_id + "\n")
    done = "; ".join(completed) or "nothing changed"
    sys.stderr.write(f"syncd: already initialized in {paths.state_dir}; {done}\n")
    if had_config:
        try:
            current = load_config(config_file)
        except ConfigError as exc:  # init leaves it be; `run` is what it stops
            _note(f"warning: {exc}; `syncd run` refuses to start until it is fixed")
        else:
            _not_applied(args, paths, current)
    return EXIT_OK


def _init_new(args: argparse.Namespace, paths: Paths, name: str, listen: str) -> int:
    """``syncd init`` on a home without an identity."""
    from syncd.daemon.run import prepare_home

    kept: Config | None = None
    if paths.config_file.exists():  # a hand-written file; a bad one stops us before anything
        kept = load_config(paths.config_file)
    identity, _created = prepare_home(paths, report=_note)
    if kept is None:
        _write_config(paths, name, listen)
    _create_database(paths)
    if args.json:
        print_json({"device_id": identity.device_id, "created": True})
    else:
        write(identity.device_id + "\n")
        config = f"; kept the existing {paths.config_file}" if kept else f" and {paths.config_file}"
        sys.stderr.write(f"syncd: created identity in {paths.state_dir}{config}\n")
    if kept is not None:
        _not_applied(args, paths, kept)
    return EXIT_OK


def _write_config(paths: Paths, name: str, listen: str) -> None:
    """Write the initial config.toml and prove it valid by loading it."""
    from syncd.daemon.run import write_initial_config

    write_initial_config(paths, name, listen)
    load_config(paths.config_file)


def _create_database(paths: Paths) -> None:
    """Make the (empty) database with the identity: a home whose identity has no database
    is one whose database was lost, which `syncd run` then warns about."""
    from syncd.daemon.run import create_database

    # What the store logs (a write-ahead log it set aside) is told as the CLI tells things.
    said = logging.StreamHandler(sys.stderr)
    said.setFormatter(logging.Formatter("syncd: %(message)s"))
    store_log = logging.getLogger("syncd.replica")
    store_log.addHandler(said)
    try:
        create_database(paths)
    finally:
        store_log.removeHandler(said)


def _not_applied(args: argparse.Namespace, paths: Paths, config: Config) -> None:
    """Name the ``--name``/``--listen`` that differ from an existing config (init keeps it)."""
    ignored = [
        f"{option} {given!r}"
        for option, given, current in (
            ("--name", args.name, config.name),
            ("--listen", args.listen, config.listen),
        )
        if given is not None and given != current
    ]
    if ignored:
        _note(f"not applied, edit {paths.config_file} instead: {', '.join(ignored)}")


def cmd_run(args: argparse.Namespace, paths: Paths) -> int:
    """``syncd run``."""
    from syncd.daemon.held_signals import hold_signals

    hold_signals()  # before the slow imports: a SIGTERM now stops the daemon once it is up
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
    from syncd.identity import load_identity

    identity = load_identity(paths.state_dir)
    if identity.certificate_reissued:
        _note(f"re-issued the certificate {identity.cert_path} from the key")
    if args.json:
        print_json({"device_id": identity.device_id})
    else:
        write(identity.device_id + "\n")
    return EXIT_OK


class _Stop(Exception):
    """SIGTERM while watching: end the stream like Ctrl-C does."""


def _stop_on_signals() -> None:
    """Make SIGINT and SIGTERM end ``watch`` cleanly, even if SIGINT was ignored on entry
    (a background job of a non-interactive shell starts with SIGINT ignored)."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise _Stop

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def cmd_watch(args: argparse.Namespace, paths: Paths) -> int:
    """``syncd watch``: one JSON line per change until SIGINT/SIGTERM (then exit 0);
    resubscribes after an overflow."""
    _stop_on_signals()
    try:
        return _watch(args, paths)
    except (_Stop, KeyboardInterrupt):
        try:
            flush()
        except BrokenPipeError:
            _silence_stdout()
        return EXIT_OK


def _watch(args: argparse.Namespace, paths: Paths) -> int:
    _check_names(args)
    shown: set[str] = set()  # keys whose last line showed an existing document
    with _client(paths) as client:
        client.watch(args.ns, args.prefix, args.initial)
        for msg in client.notifications():
            params = msg.get("params")
            if not isinstance(params, dict):
                raise _unexpected(paths, "notification", msg)
            if msg.get("method") == "overflow":
                sys.stderr.write("syncd: watch fell behind; resending the current documents\n")
                # Subscribed first, then listed: a document deleted before the new
                # subscription is missing from the list, one deleted after comes as a change.
                client.watch(args.ns, args.prefix, True)
                for gone in sorted(shown - set(client.list(args.ns, args.prefix))):
                    line = {"ns": args.ns, "key": gone, "value": None, "deleted": True}
                    write(json_text({**line, "origin": None}) + "\n")
                    shown.discard(gone)
                flush()
                continue
            params.pop("subscription", None)
            key = params.get("key")
            if isinstance(key, str):
                (shown.discard if params.get("deleted") else shown.add)(key)
            write(json_text(params) + "\n")
            flush()
    return EXIT_OK


def _check_names(args: argparse.Namespace) -> None:
    """NS, KEY and PREFIX arguments are checked here, as the daemon would (a usage error,
    exit 2); so is ``folder add``'s PATH."""
    for attr, what in (("ns", "namespace"), ("key", "key"), ("prefix", "prefix")):
        value = getattr(args, attr, None)
        if attr == "prefix" and value == "":
            continue  # (no prefix: every key)
        problem = None if value is None else name_problem(value)
        if problem is not None:
            raise UsageError(f"the {what} {problem}")
    if getattr(args, "path", None) == "":
        raise UsageError("the folder path must not be empty")


def request_for(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The JSON-RPC (method, params) of a daemon command; checks local input first."""
    cmd = args.command
    _check_names(args)
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
            if addr not in addrs:
                addrs.append(addr)
        if len(addrs) > MAX_ADDRESSES:
            raise UsageError(f"--addr: at most {MAX_ADDRESSES} addresses ({len(addrs)} given)")
        params: dict[str, Any] = {"device_id": _device(args.device_id)}
        if args.name is not None:
            params["name"] = _device_name(args.name, "--name")
        if addrs:  # without --addr, the addresses a trusted device already has are kept
            params["addresses"] = addrs
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
        return "put", {"ns": args.ns, "key": args.key, "value": _document_arg(args.value)}
    if cmd == "patch":
        return "patch", {"ns": args.ns, "key": args.key, "ops": _ops_arg(args.ops)}
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
        _check_names(args)  # wrong arguments are a usage error even here
        raise SyncdError(
            f"`syncd folder {args.folder_command}` is not available in this version yet"
        )
    method, params = request_for(args)  # usage errors win over a missing daemon
    with _client(paths) as client:
        result = client.call(method, **params)
    if not fits(result, RESULTS.get(args.command, dict)):
        raise _unexpected(paths, f"answer to {method}", result)
    return show(args, result)


def _unexpected(paths: Paths, what: str, value: Any) -> SyncdError:
    """Something from the socket that no syncd daemon (of this version) sends."""
    text = repr(value)
    text = text if len(text) <= 200 else text[:200] + "..."
    return SyncdError(
        f"unexpected {what} from {paths.socket}: {text}; "
        "is this the socket of a syncd daemon of the same version?"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    paths: Paths | None = None
    try:
        args = build_parser().parse_args(argv)
        _merge_global_options(args)
        for option in ("home", "socket"):
            if getattr(args, option) == "":  # (an empty $SYNCD_HOME is unset: resolve_paths)
                raise UsageError(f"--{option} must not be empty")
        paths = resolve_paths(args.home, socket=args.socket)
        status = _dispatch(args, paths)
        flush()  # a full disk shows at the flush; report it here, not as an exit-time error
        return status
    except UsageError as exc:
        return _fail(exc, EXIT_USAGE)
    except DaemonNotRunning as exc:
        if paths is not None and paths.socket == paths.daemon_socket and _lock_held(paths):
            return _fail(
                SyncdError(
                    f"a syncd daemon holds this home's lock ({paths.lock_file}) but its socket "
                    f"{paths.socket} is missing: it may be starting or stopping; if this "
                    "persists (the socket was deleted?), restart the daemon"
                ),
                EXIT_NO_DAEMON,
            )
        return _fail(exc, EXIT_NO_DAEMON)
    except RemoteError as exc:
        limit = exc.data.get("limit")
        if exc.reason == "too_large" and isinstance(limit, int):  # the request line itself
            exc = RemoteError(
                exc.code,
                f"the request is too large: the daemon takes requests of up to {limit} bytes "
                "(api.max_line_bytes in its config)",
                exc.data,
            )
        return _fail(exc, EXIT_FAILED)
    except Failed:
        return EXIT_FAILED
    except OutputError as exc:
        _silence_stdout()  # the unwritten rest would fail again when Python exits
        return _fail(exc, EXIT_FAILED)
    except (ClientError, ConfigError, SyncdError) as exc:
        return _fail(exc, EXIT_FAILED)
    except KeyboardInterrupt:
        sys.stderr.write("syncd: interrupted\n")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK
    except OSError as exc:  # a file or directory syncd could not use that no check foresaw
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(SyncdError(f"{where}{exc.strerror or exc}"), EXIT_FAILED)


def _lock_held(paths: Paths) -> bool:
    """Whether someone holds the home's instance lock, read from /proc/locks: taking the lock
    to find out, even for a moment, could make a daemon starting right now fail."""
    try:
        st = os.stat(paths.lock_file)
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            table = locks.read()
    except OSError:
        return False
    # By inode alone: on btrfs, stat's device number is not the one /proc/locks shows.
    inode = f":{st.st_ino}"
    return any(
        " FLOCK " in line and any(field.endswith(inode) for field in line.split())
        for line in table.splitlines()
    )


def _fail(exc: Exception, status: int) -> int:
    from syncd.daemon.logs import stderr_is_journal

    message = " ".join(str(exc).split())
    # Under systemd the line is the unit's reason for failing: logged as an error (<3>).
    sys.stderr.write(f"{'<3>' if stderr_is_journal() else ''}syncd: {message}\n")
    return status


def _silence_stdout() -> None:
    """After EPIPE or ENOSPC on stdout (``syncd ls | head``), point stdout at /dev/null so
    that Python's flush at exit does not report a second error."""
    if sys.stdout is None:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
