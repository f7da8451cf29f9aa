"""The configuration file (``config.toml``): keys, defaults, validation, and the initial file.

Every key is declared once in :data:`KEYS` with its default and a validator; an unknown key or
a bad value raises :class:`ConfigError` naming the key and the file. docs/config.md describes
the same keys for users.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from syncd.errors import SyncdError

LOG_LEVELS = ("debug", "info", "warning", "error")
MiB = 1024 * 1024


class ConfigError(SyncdError):
    """The configuration file or a configuration value is invalid."""

    reason = "bad_config"


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PORT = re.compile(r"[0-9]{1,5}")


MAX_ADDRESSES = 64
"""How many static addresses one trusted device may have."""


def parse_listen(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` into (host, port); raise ``ValueError`` saying what is wrong.

    HOST is an IPv4 address (``0.0.0.0`` for all), an IPv6 address in brackets (``[::]``,
    ``[fe80::1%eth0]``) or a DNS host name (letters, digits, hyphens and dots; labels of 1-63
    characters that neither start nor end with a hyphen; at most 253 characters). A name whose
    last label is all digits is read as an IPv4 address, as resolvers do, so ``999.1.1.1`` is
    refused rather than looked up. PORT is 1-65535: peers dial a fixed port, so 0 ("any free
    port") is refused. Used for this device's ``listen`` address and for other devices'
    addresses.
    """
    if not isinstance(text, str) or ":" not in text:
        raise ValueError("expected HOST:PORT")
    if re.fullmatch(r"\[[^\]]*\]", text):
        raise ValueError("missing :PORT after the address: [ADDR]:PORT")
    bad = next((c for c in text if not "!" <= c <= "~"), None)
    if bad is not None:
        raise ValueError(
            f"unexpected character {bad!r}: HOST:PORT has no spaces, control or non-ASCII "
            "characters"
        )
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        _check_ipv6(host[1:-1])
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError("an IPv6 address must be written in brackets: [ADDR]:PORT")
    elif not host:
        raise ValueError("missing host (use 0.0.0.0 or [::] for all addresses)")
    else:
        _check_host(host)
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r}")
    if port_text.startswith("0") and port_text != "0":
        raise ValueError(f"port {port_text!r} has a leading zero; write {int(port_text)}")
    port = int(port_text)
    if port == 0:
        raise ValueError(
            "port 0 (any free port) is not allowed: peers need a fixed port to connect to; "
            "use 1 to 65535"
        )
    return host, port


def _check_ipv6(host: str) -> None:
    address, percent, zone = host.partition("%")
    if percent and not _ZONE.fullmatch(zone):
        raise ValueError(f"bad IPv6 zone {zone!r} (expected an interface name or number)")
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IPv6 address") from None


def _check_host(host: str) -> None:
    labels = host.split(".")
    if labels[-1].isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"{host!r} is not an IPv4 address (four numbers from 0 to 255, "
                "without leading zeros)"
            ) from None
        return
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{host!r} is neither an IP address nor a host name (letters, digits, hyphens and "
            "dots; each part 1 to 63 characters, not starting or ending with a hyphen)"
        )


def check_device_name(name: str) -> str:
    """Validate a device name and return it unchanged: 1-256 printable characters, not blank.

    Printable is ``str.isprintable()``: letters, marks, digits, punctuation, symbols and the
    ASCII space. Control and format characters (U+0085, the zero-width space U+200B), other
    spaces and lone surrogates are not. Raises ``ValueError`` saying what is wrong.
    """
    if not isinstance(name, str):
        raise ValueError("a device name must be a string")
    if not name.strip():
        raise ValueError("a device name must not be empty or blank")
    if len(name) > 256:
        raise ValueError(f"a device name has at most 256 characters, got {len(name)}")
    for i, c in enumerate(name):
        if not c.isprintable():
            raise ValueError(
                f"a device name must be printable characters; {c!r} (U+{ord(c):04X}) at "
                f"position {i + 1} is not"
            )
    return name


def _listen(value: Any) -> str:
    parse_listen(value)
    return str(value)


def _level(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return value.lower()


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}")
        return value

    return check


@dataclass(frozen=True)
class Key:
    """One configuration key: dotted name, default, validator, one-line description."""

    name: str
    default: Any
    check: Callable[[Any], Any]
    doc: str


KEYS: tuple[Key, ...] = (
    Key(
        "name",
        None,
        check_device_name,
        "this device's name shown to peers (default: the host name)",
    ),
    Key("listen", "0.0.0.0:7400", _listen, "HOST:PORT for peer connections"),
    Key("log_level", "info", _level, "debug, info, warning or error (`--log-level` wins)"),
    Key(
        "api.max_line_bytes",
        16 * MiB,
        _int_range(1024, 1024 * MiB),
        "longest accepted JSON-RPC line; longer ones get error -32000 (too_large)",
    ),
    Key(
        "api.max_connections",
        256,
        _int_range(1, 65536),
        "concurrent local API connections; more are refused",
    ),
    Key(
        "api.max_in_flight",
        64,
        _int_range(1, 4096),
        "requests one connection may have in flight before the daemon stops reading it",
    ),
    Key(
        "api.watch_queue",
        1024,
        _int_range(1, 1_000_000),
        "changes queued per watch subscription before it overflows",
    ),
    Key(
        "api.shutdown_grace_s",
        10,
        _int_range(0, 3600),
        "seconds in-flight requests may take to finish on SIGTERM",
    ),
    Key(
        "store.cache_documents",
        16384,
        _int_range(16, 10_000_000),
        "documents kept decoded in memory, at most",
    ),
    Key(
        "store.cache_stored_mb",
        1,
        _int_range(1, 65536),
        "MiB of documents (their stored size) kept decoded; in memory they take 40-120 times that",
    ),
)
_BY_NAME = {k.name: k for k in KEYS}
_SECTIONS = {k.name.split(".")[0] for k in KEYS if "." in k.name}


@dataclass(frozen=True)
class ApiConfig:
    """``[api]``: limits of the local JSON-RPC server."""

    max_line_bytes: int = 16 * MiB
    max_connections: int = 256
    max_in_flight: int = 64
    watch_queue: int = 1024
    shutdown_grace_s: int = 10


@dataclass(frozen=True)
class StoreConfig:
    """``[store]``: the replica's cache of decoded documents (read when the daemon starts).

    A miss costs a SELECT and a decode (~40 µs for a small document), paid again by every
    write to a working set larger than the cache. A small document takes ~3 KB decoded, so
    16,384 of them take ~50 MB; larger ones are bounded by the stored size first: a decoded
    document takes 40 to 120 times its stored size (a text typed in many places is the
    heaviest), so 1 MiB keeps the cache under ~120 MB (about 11,000 documents of 100 bytes).
    """

    cache_documents: int = 16384
    cache_stored_mb: int = 1


@dataclass(frozen=True)
class Config:
    """The validated configuration of one instance."""

    name: str
    listen: str = "0.0.0.0:7400"
    log_level: str = "info"
    api: ApiConfig = field(default_factory=ApiConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    source: Path | None = None


def default_name() -> str:
    """The default device name: the host name."""
    return socket.gethostname() or "syncd"


def _flatten(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: `{key}` must be a table ([{key}])")
            for sub, subvalue in value.items():
                flat[f"{key}.{sub}"] = subvalue
        elif isinstance(value, dict) and key not in _BY_NAME:
            known = ", ".join(f"[{section}]" for section in sorted(_SECTIONS))
            raise ConfigError(f"{where}: unknown section [{key}] (known sections: {known})")
        else:
            flat[key] = value
    return flat


def config_from_mapping(data: Mapping[str, Any], where: str = "<config>") -> Config:
    """Validate parsed TOML; raise :class:`ConfigError` naming the key and ``where``."""
    values: dict[str, Any] = {}
    for name, value in _flatten(data, where).items():
        key = _BY_NAME.get(name)
        if key is None:
            known = ", ".join(k.name for k in KEYS)
            raise ConfigError(f"{where}: unknown key `{name}` (known keys: {known})")
        try:
            values[name] = key.check(value)
        except ValueError as exc:
            raise ConfigError(
                f"{where}: bad value for `{name}`: {exc} (got {_toml_value(value)})"
            ) from None

    def section(name: str) -> dict[str, Any]:
        prefix = name + "."
        return {
            k.name.removeprefix(prefix): values.get(k.name, k.default)
            for k in KEYS
            if k.name.startswith(prefix)
        }

    return Config(
        name=values.get("name") or default_name(),
        listen=values.get("listen", _BY_NAME["listen"].default),
        log_level=values.get("log_level", _BY_NAME["log_level"].default),
        api=ApiConfig(**section("api")),
        store=StoreConfig(**section("store")),
    )


MAX_CONFIG_BYTES = 1 << 20


def _read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes (a FIFO
    put in its place would block the reader, a device would never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{path}: larger than {limit} bytes; not a config file?")
    return data


def load_config(path: Path) -> Config:
    """Read and validate ``path``; a missing file means all defaults."""
    try:
        text = _read_regular_file(path, MAX_CONFIG_BYTES).decode("utf-8-sig")  # (BOM: editors)
    except FileNotFoundError:
        return Config(name=default_name(), source=None)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return replace(config_from_mapping(data, str(path)), source=path)


def _toml_value(value: Any) -> str:
    """``value`` as it is written in TOML (for messages): ``true``, ``"text"``, ``1500.0``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    return str(value)


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's: no raw control character)."""
    return json.dumps(value, ensure_ascii=False)


def initial_config_text(name: str, listen: str) -> str:
    """The config.toml that ``syncd init`` writes: the given keys, the rest commented out."""
    lines = [
        "# syncd configuration; every key is described in docs/config.md.",
        f"name = {_toml_string(name)}",
        f"listen = {_toml_string(listen)}",
        '# log_level = "info"',
    ]
    for section in sorted(_SECTIONS):
        lines += ["", f"[{section}]"]
        for key in KEYS:
            if key.name.startswith(section + "."):
                lines.append(f"# {key.name.split('.', 1)[1]} = {key.default!r}   # {key.doc}")
    return "\n".join(lines) + "\n"
