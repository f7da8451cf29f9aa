"""config.toml validation and the instance's paths (--home, systemd, XDG)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from syncd.config import (
    KEYS,
    ConfigError,
    check_device_name,
    config_from_mapping,
    initial_config_text,
    load_config,
    parse_listen,
)
from syncd.paths import resolve_paths


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path / "config.toml")
    assert config.listen == "0.0.0.0:7400"
    assert config.log_level == "info"
    assert config.api.max_line_bytes == 16 * 1024 * 1024
    assert config.name


def test_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'name = "lap"\nlisten = "[::1]:9000"\nlog_level = "DEBUG"\n'
        "[api]\nmax_line_bytes = 4096\nwatch_queue = 7\n"
        "[store]\ncache_documents = 100\ncache_stored_mb = 4\n",
    )
    config = load_config(path)
    assert (config.name, config.listen, config.log_level) == ("lap", "[::1]:9000", "debug")
    assert (config.api.max_line_bytes, config.api.watch_queue) == (4096, 7)
    assert config.api.max_in_flight == 64  # (the section's other keys keep their defaults)
    assert (config.store.cache_documents, config.store.cache_stored_mb) == (100, 4)
    assert config.source == path


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('nmae = "x"\n', "unknown key `nmae`"),
        ("[api]\nmax_lines = 3\n", "unknown key `api.max_lines`"),
        ("[bogus]\nx = 1\n", "unknown section [bogus] (known sections: [api], [store])"),
        ("[store]\ncache_mb = 3\n", "unknown key `store.cache_mb`"),
        ("[store]\ncache_stored_mb = 0\n", "bad value for `store.cache_stored_mb`"),
        ("[store]\ncache_stored_mb = 0.5\n", "expected an integer from 1 to 65536"),
        ("[store]\ncache_documents = 15\n", "bad value for `store.cache_documents`"),
        ("store = 1\n", "`store` must be a table"),
        ('listen = "nowhere"\n', "bad value for `listen`"),
        ('listen = "::1:80"\n', "brackets"),
        ('listen = "[::1]"\n', "missing :PORT after the address"),
        ('listen = "h:99999"\n', "port must be"),
        ("listen = 7400\n", "bad value for `listen`"),
        ('log_level = "loud"\n', "bad value for `log_level`"),
        ("[api]\nmax_line_bytes = 10\n", "bad value for `api.max_line_bytes`"),
        ("[api]\nwatch_queue = true\n", "bad value for `api.watch_queue`"),
        ('[api]\nwatch_queue = "10"\n', "bad value for `api.watch_queue`"),
        # Values are shown as TOML writes them, not as Python does.
        ("[api]\nwatch_queue = true\n", "(got true)"),
        ('[api]\nwatch_queue = "10"\n', '(got "10")'),
        ("[api]\nwatch_queue = 1500.0\n", "(got 1500.0)"),
        ('log_level = "a\\u001b[31m\\nb"\n', '(got "a\\u001b[31m\\nb")'),  # escaped, one line
        ('name = {first = "x"}\n', "bad value for `name`"),
        ('listen = "[::1]:80]"\n', "bad value for `listen`"),
        ('api = "x"\n', "`api` must be a table"),
        ('name = ""\n', "bad value for `name`"),
        ("name = [\n", "invalid TOML"),
        # The same checks as `syncd init` and the API's `trust` (config.check_device_name,
        # config.parse_listen).
        ('name = "a\\u0085b"\n', "U+0085"),
        ('name = "a\\u200bb"\n', "U+200B"),
        ('listen = " 1.2.3.4:80"\n', "unexpected character"),
        ('listen = "999.1.1.1:80"\n', "not an IPv4 address"),
        ('listen = "0.0.0.0:0"\n', "port 0"),
    ],
)
def test_bad_files_name_the_key_and_the_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert fragment in message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_a_config_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # nobody writes to it: reading would block for ever
    with pytest.raises(ConfigError, match=f"{fifo}: not a regular file"):
        load_config(fifo)
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(tmp_path / "dir.toml")
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load_config(big)


def test_initial_config_is_valid_and_documents_every_key() -> None:
    text = initial_config_text('we"ird\\name', "127.0.0.1:1")
    config = config_from_mapping(tomllib.loads(text))
    assert config.name == 'we"ird\\name'
    assert config.listen == "127.0.0.1:1"
    for key in KEYS:
        assert key.name.split(".")[-1] in text
    # Each commented-out key, uncommented, is valid and says the default.
    uncommented = re.sub(r"(?m)^# (\w+ = .*?)(   # .*)?$", r"\1", text)
    assert config_from_mapping(tomllib.loads(uncommented)) == config_from_mapping(
        {"name": config.name, "listen": config.listen}
    )
    assert uncommented.count(" = ") == len(KEYS)


def test_a_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    # Some editors start UTF-8 files with one; TOML parsers do not take it.
    path = tmp_path / "config.toml"
    path.write_bytes(b'\xef\xbb\xbfname = "lap"\n')
    assert load_config(path).name == "lap"


def test_parse_listen() -> None:
    assert parse_listen("0.0.0.0:7400") == ("0.0.0.0", 7400)
    assert parse_listen("[::]:22000") == ("::", 22000)
    assert parse_listen("host.example:22") == ("host.example", 22)
    for bad in ("", ":80", "[zz]:80", "a:b", "a:-1"):
        with pytest.raises(ValueError, match=r".+"):
            parse_listen(bad)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("0.0.0.0:22000", "0.0.0.0", 22000),
        ("[::]:22000", "::", 22000),
        ("localhost:22000", "localhost", 22000),
        ("255.255.255.255:65535", "255.255.255.255", 65535),
        ("[fe80::1%eth0]:7400", "fe80::1%eth0", 7400),
        ("Host-1.example.COM:1", "Host-1.example.COM", 1),
        ("a" * 63 + ".example:7400", "a" * 63 + ".example", 7400),
        ("host2.x1:80", "host2.x1", 80),
    ],
)
def test_parse_listen_accepts(text: str, host: str, port: int) -> None:
    assert parse_listen(text) == (host, port)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (" 1.2.3.4:80", "unexpected character ' '"),
        ("1.2.3.4:80 ", "unexpected character ' '"),
        ("1.2.3.4\n:80", "unexpected character '\\n'"),
        ("\udcff:1", "unexpected character '\\udcff'"),
        ("h\u00e9te:1", "non-ASCII"),
        ("999.1.1.1:80", "not an IPv4 address"),
        ("1.2.3:80", "not an IPv4 address"),
        ("01.2.3.4:80", "not an IPv4 address"),
        ("host.1:80", "not an IPv4 address"),
        ("a_b:80", "host name"),
        ("-a.example:80", "host name"),
        ("a-.example:80", "host name"),
        ("a..b:80", "host name"),
        ("a" * 64 + ".example:80", "host name"),
        (".".join(["a" * 63] * 4) + ":80", "host name"),  # 255 characters
        ("[::1%a b]:80", "unexpected character"),
        ("[::1%]:80", "zone"),
        ("[1.2.3.4]:80", "not an IPv6 address"),
        ("[::1:80", "brackets"),
        ("1.2.3.4:0", "port 0 (any free port) is not allowed"),
        ("1.2.3.4:080", "port '080' has a leading zero; write 80"),
        ("[::]:0", "port 0 (any free port) is not allowed"),
        ("h:65536", "port must be a number from 1 to 65535"),
        ("h:\u0663", "non-ASCII"),
        ("h:", "port must be"),
    ],
)
def test_parse_listen_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_listen(text)


def test_device_names() -> None:
    for good in ("laptop", "Anna's phone", "ü" * 256, " padded ", "日本語"):
        assert check_device_name(good) == good
    for bad, fragment in (
        ("", "empty or blank"),
        ("   ", "empty or blank"),
        ("x" * 257, "at most 256"),
        ("a\x85b", "U+0085"),
        ("a\u200bb", "U+200B"),
        ("a\tb", "U+0009"),
        ("a\u00a0b", "U+00A0"),
        ("a\udcffb", "U+DCFF"),
    ):
        with pytest.raises(ValueError, match=re.escape(fragment)):
            check_device_name(bad)


def test_home_puts_everything_in_one_directory(tmp_path: Path) -> None:
    paths = resolve_paths(tmp_path, env={"STATE_DIRECTORY": "/var/lib/x"})
    assert paths.config_dir == paths.state_dir == paths.runtime_dir == tmp_path
    assert paths.socket == tmp_path / "syncd.sock"
    assert paths.config_file == tmp_path / "config.toml"
    env_home = resolve_paths(None, env={"SYNCD_HOME": str(tmp_path)})
    assert env_home == paths


def test_xdg_places() -> None:
    env = {
        "HOME": "/home/u",
        "XDG_CONFIG_HOME": "/c",
        "XDG_STATE_HOME": "/s",
        "XDG_RUNTIME_DIR": "/run/user/1000",
    }
    paths = resolve_paths(None, env=env)
    assert paths.config_file == Path("/c/syncd/config.toml")
    assert paths.state_dir == Path("/s/syncd")
    assert paths.socket == Path("/run/user/1000/syncd/syncd.sock")


def test_xdg_defaults_and_no_runtime_dir() -> None:
    paths = resolve_paths(None, env={"HOME": "/home/u"})
    assert paths.config_dir == Path("/home/u/.config/syncd")
    assert paths.state_dir == Path("/home/u/.local/state/syncd")
    assert paths.socket == Path("/home/u/.local/state/syncd/syncd.sock")


def test_relative_xdg_directories_are_ignored() -> None:
    # The XDG base directory spec: a relative path is invalid and must be ignored, not taken
    # relative to wherever the daemon happens to start.
    env = {"HOME": "/home/u", "XDG_STATE_HOME": "relstate", "XDG_RUNTIME_DIR": "run"}
    paths = resolve_paths(None, env=env)
    assert paths.state_dir == Path("/home/u/.local/state/syncd")
    assert paths.socket == Path("/home/u/.local/state/syncd/syncd.sock")


def test_systemd_directories_win_over_xdg() -> None:
    env = {
        "HOME": "/home/u",
        "XDG_RUNTIME_DIR": "/run/user/1000",
        "CONFIGURATION_DIRECTORY": "/etc/syncd",
        "STATE_DIRECTORY": "/var/lib/syncd:/var/lib/other",
        "RUNTIME_DIRECTORY": "/run/syncd",
    }
    paths = resolve_paths(None, env=env)
    assert paths.config_file == Path("/etc/syncd/config.toml")
    assert paths.state_dir == Path("/var/lib/syncd")
    assert paths.socket == Path("/run/syncd/syncd.sock")


def test_home_on_the_command_line_beats_the_socket_variable(tmp_path: Path) -> None:
    # $SYNCD_SOCKET is a standing default (say, for a system instance); `--home DIR` names
    # the instance meant now, and the contract puts its socket at DIR/syncd.sock.
    env = {"SYNCD_SOCKET": "/run/syncd/alice/syncd.sock", "SYNCD_HOME": "/elsewhere"}
    assert resolve_paths(tmp_path, env=env).socket == tmp_path / "syncd.sock"
    assert resolve_paths(tmp_path, env=env, socket="/s").socket == Path("/s")  # --socket wins
    assert resolve_paths(None, env=env).socket == Path("/run/syncd/alice/syncd.sock")
    xdg = {"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1", "SYNCD_SOCKET": "/x.sock"}
    assert resolve_paths(None, env=xdg).socket == Path("/x.sock")


def test_socket_override_only_moves_the_socket(tmp_path: Path) -> None:
    paths = resolve_paths(tmp_path, env={}, socket="/x/y.sock")
    assert paths.socket == Path("/x/y.sock")
    assert paths.state_dir == tmp_path


def test_the_daemon_socket_ignores_the_client_override(tmp_path: Path) -> None:
    paths = resolve_paths(None, env={"SYNCD_HOME": str(tmp_path), "SYNCD_SOCKET": "/x/y.sock"})
    assert paths.socket == Path("/x/y.sock")
    assert paths.daemon_socket == tmp_path / "syncd.sock"
    xdg = resolve_paths(
        None, env={"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1"}, socket="/s"
    )
    assert xdg.daemon_socket == Path("/run/user/1/syncd/syncd.sock")


def test_the_dataclass_defaults_are_the_keys_defaults() -> None:
    # A missing file gives Config's own defaults; a file gives KEYS': they must agree.
    from syncd.config import Config

    assert config_from_mapping({"name": "x"}) == Config(name="x")
