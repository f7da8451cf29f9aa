"""The ``syncd`` command line against a real daemon: every command, output, exit status."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import math
import os
import subprocess
import sys
import threading
import tomllib
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import syncd.daemon.run
import syncd.identity
from syncd.cli import main
from syncd.daemon.unixsock import bind_unix
from syncd.deviceid import format_device_id
from tests.daemon_harness import DaemonProcess, serve_for_module

OTHER = format_device_id(b"\x07" * 32)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    yield from serve_for_module(tmp_path_factory.mktemp("cli") / "home")


class Run:
    """Runs the CLI in-process, capturing stdout, stderr and the exit status."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            status = main(list(argv))
        except SystemExit as exc:
            status = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return status, out, err


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    for var in ("SYNCD_HOME", "SYNCD_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    return Run(capsys, monkeypatch)


def ok(result: tuple[int, str, str]) -> str:
    status, out, err = result
    assert status == 0, err
    return out


def fails(result: tuple[int, str, str], status: int, fragment: str) -> None:
    got, _out, err = result
    assert got == status, (got, err)
    assert err.startswith("syncd: ")
    assert err.count("\n") == 1, err  # one line
    assert fragment in err, err


def test_init_and_id_need_no_daemon(run: Run, tmp_path: Path) -> None:
    home = str(tmp_path / "h")
    device_id = ok(run("--home", home, "init", "--name", "lap", "--listen", "127.0.0.1:9"))
    device_id = device_id.strip()
    assert (tmp_path / "h" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "h" / "syncd.db").is_file()  # so a missing one later means it was lost
    config = (tmp_path / "h" / "config.toml").read_text()
    assert 'name = "lap"' in config
    assert 'listen = "127.0.0.1:9"' in config
    assert ok(run("--home", home, "id")).strip() == device_id
    assert json.loads(ok(run("--home", home, "--json", "id"))) == {"device_id": device_id}
    status, out, err = run("--home", home, "init", "--name", "other")
    assert status == 0
    assert out.strip() == device_id
    assert "already initialized" in err
    assert f"not applied, edit {tmp_path / 'h' / 'config.toml'} instead: --name 'other'" in err
    assert "lap" in (tmp_path / "h" / "config.toml").read_text()
    # An existing directory init makes private is said, not done silently.
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o755)
    status, out, err = run("--home", str(tmp_path / "open"), "init")
    assert status == 0
    assert f"made {tmp_path / 'open'} private: mode 0700 (it was 0755)" in err
    status, out, err = run("--home", home, "--json", "init")
    assert (status, json.loads(out)) == (0, {"device_id": device_id, "created": False})
    assert "already initialized" in err  # said on stderr with --json too


def test_init_makes_the_identity_and_database_under_the_home_setup_lock(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two inits, or an init and a first `run`, started together on a new home make one
    identity: each makes the key and the database only while it holds the state directory's
    flock (a test that they race: tests/test_daemon_process.py)."""
    home = tmp_path / "h"

    def held() -> bool:
        fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    seen: list[tuple[str, bool]] = []
    create_identity, create_database = (
        syncd.identity.create_identity,
        syncd.daemon.run.create_database,
    )

    def making_identity(state_dir: Path) -> syncd.identity.Identity:
        seen.append(("identity", held()))
        return create_identity(state_dir)

    def making_database(paths: Any) -> None:
        seen.append(("database", held()))
        create_database(paths)

    monkeypatch.setattr(syncd.identity, "create_identity", making_identity)
    monkeypatch.setattr(syncd.daemon.run, "create_database", making_database)
    device_id = ok(run("--home", str(home), "init")).strip()
    assert seen == [("identity", True), ("database", True)]
    assert not held()  # released
    (home / "syncd.db").unlink()
    assert ok(run("--home", str(home), "init")).strip() == device_id  # completes it, locked too
    assert seen[2:] == [("database", True)]


def test_init_on_a_file_system_without_locks_says_so(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    home = tmp_path / "h"
    fails(run("--home", str(home), "init"), 1, f"cannot lock {home}: No locks available")
    assert not (home / "key.pem").exists()


def test_init_again_writes_a_config_that_is_missing(run: Run, tmp_path: Path) -> None:
    # An init cut short after the identity (a full disk) is completed by running it again.
    home = tmp_path / "h"
    device_id = ok(run("--home", str(home), "init")).strip()
    (home / "config.toml").unlink()
    status, out, err = run("--home", str(home), "init", "--name", "lap", "--listen", "h:9")
    assert (status, out.strip()) == (0, device_id)
    assert f"wrote the missing {home / 'config.toml'}" in err
    config = (home / "config.toml").read_text()
    assert 'name = "lap"' in config and 'listen = "h:9"' in config
    (home / "syncd.db").unlink()  # cut short before the database
    status, out, err = run("--home", str(home), "init")
    assert (status, out.strip()) == (0, device_id)
    assert f"created the missing database {home / 'syncd.db'}" in err
    assert (home / "syncd.db").is_file()
    (home / "config.toml").unlink()  # a dangling link (dotfiles) is not replaced
    (home / "config.toml").symlink_to(tmp_path / "dotfiles" / "syncd.toml")
    status, out, err = run("--home", str(home), "init")
    assert status == 0 and "nothing changed" in err
    assert (home / "config.toml").is_symlink()


def test_a_missing_certificate_is_reissued_and_said(run: Run, tmp_path: Path) -> None:
    home = tmp_path / "h"
    device_id = ok(run("--home", str(home), "init")).strip()
    cert = home / "cert.pem"
    cert.unlink()
    status, out, err = run("--home", str(home), "init")
    assert (status, out.strip()) == (0, device_id)
    assert err == (
        f"syncd: already initialized in {home}; re-issued the certificate {cert} from the key\n"
    )
    assert cert.is_file()
    status, out, err = run("--home", str(home), "id")
    assert (status, out.strip(), err) == (0, device_id, "")  # nothing to say this time
    other = tmp_path / "other"
    ok(run("--home", str(other), "init"))
    cert.write_bytes((other / "cert.pem").read_bytes())  # another device's certificate
    status, out, err = run("--home", str(home), "id")
    assert (status, out.strip()) == (0, device_id)
    assert err == f"syncd: re-issued the certificate {cert} from the key\n"
    assert cert.read_bytes() != (other / "cert.pem").read_bytes()


def test_init_completing_a_database_tells_of_a_log_it_set_aside(run: Run, tmp_path: Path) -> None:
    home = tmp_path / "h"
    ok(run("--home", str(home), "init"))
    (home / "syncd.db").unlink()  # moved away after a crash, its log left behind
    (home / "syncd.db-wal").write_bytes(b"the last writes")
    status, _out, err = run("--home", str(home), "init")
    assert status == 0
    lines = err.splitlines()
    assert all(line.startswith("syncd: ") for line in lines), err
    assert f"{home / 'syncd.db'} does not exist but its write-ahead log does" in err
    assert "created the missing database" in err
    (aside,) = home.glob("syncd.db-wal.stale-*")
    assert aside.read_bytes() == b"the last writes"


def test_init_rejects_bad_listen(run: Run, tmp_path: Path) -> None:
    fails(run("--home", str(tmp_path), "init", "--listen", "nohost"), 2, "--listen")


def test_id_without_identity(run: Run, tmp_path: Path) -> None:
    fails(run("--home", str(tmp_path), "id"), 1, "syncd init")


def test_no_daemon_names_the_socket(run: Run, tmp_path: Path) -> None:
    fails(run("--home", str(tmp_path), "status"), 3, str(tmp_path / "syncd.sock"))
    fails(run("--home", str(tmp_path), "ls", "n"), 3, "no syncd daemon is running")


def test_usage_errors_are_one_line_exit_2(run: Run, tmp_path: Path) -> None:
    home = str(tmp_path)
    fails(run("--home", home, "frobnicate"), 2, "invalid choice")
    fails(run("--home", home, "get", "n"), 2, "required")
    fails(run("--home", home, "put", "n", "k", "{nope"), 2, "not valid JSON")
    typo = ("B" if OTHER[0] != "B" else "C") + OTHER[1:]
    fails(run("--home", home, "trust", typo), 2, "mistyped")
    fails(run("--home", home, "share", "n", "XYZ"), 2, "invalid device ID")
    fails(run("--home", home, "trust", OTHER, "--addr", "bad"), 2, "--addr")
    # Empty or over-long names are caught before the daemon is asked (none runs here).
    fails(run("--home", home, "get", "", "k"), 2, "the namespace must not be empty")
    fails(run("--home", home, "del", "n", ""), 2, "the key must not be empty")
    fails(run("--home", home, "put", "n", "k" * 1025, "{}"), 2, "longer than 1024 bytes")
    fails(run("--home", home, "watch", ""), 2, "the namespace must not be empty")
    fails(run("--home", home, "share", "", OTHER), 2, "the namespace must not be empty")
    # So are a prefix and folder arguments (argv that is not valid UTF-8 arrives as surrogates).
    fails(run("--home", home, "ls", "n", "\udcff"), 2, "the prefix is not valid Unicode")
    fails(run("--home", home, "watch", "n", "\udcff"), 2, "the prefix is not valid Unicode")
    fails(run("--home", home, "folder", "add", "", home), 2, "the namespace must not be empty")
    fails(run("--home", home, "folder", "add", "n", ""), 2, "the folder path must not be empty")
    fails(run("--home", home, "folder", "rm", ""), 2, "the namespace must not be empty")
    fails(run("--home", home, "put", "n", "k", " \n"), 2, "the document is empty")
    fails(
        run("--home", home, "--log-level", "debug", "run"), 2, "--log-level is an option of `run`"
    )
    fails(run("--home", home, "put", "n", "k", "-", stdin=""), 2, "(from stdin) is empty")


def test_status(run: Run, daemon: DaemonProcess) -> None:
    home = str(daemon.home)
    out = ok(run("--home", home, "status"))
    assert "device ID:" in out
    assert "version:     0.1.0" in out
    js = json.loads(ok(run("--home", home, "--json", "status")))
    assert set(js) == {"device_id", "name", "version", "listen", "peers_connected", "namespaces"}


def test_human_listing_shows_odd_names_on_one_line_each(run: Run, daemon: DaemonProcess) -> None:
    h = ("--home", str(daemon.home))
    odd = ["a\nb", '"q"', "tab\there", "line\u2028sep", "del\x7f\x85", "plain é"]
    for key in odd:
        ok(run(*h, "put", "odd\nns", key, "{}"))
    lines = ok(run(*h, "ls", "odd\nns")).splitlines()
    # One line per key, and a quoted line is the key's JSON string.
    assert len(lines) == len(odd)
    shown = {json.loads(line) if line.startswith('"') else line for line in lines}
    assert shown == set(odd)
    assert not [c for line in lines for c in line if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
    assert "plain é" in lines  # ordinary names are shown as they are
    raw = ok(run(*h, "--json", "ls", "odd\nns"))
    assert raw.count("\n") == 1 and len(raw.splitlines()) == 1  # U+2028 and C1 come escaped
    assert json.loads(raw)["keys"] == sorted(odd)
    got = ok(run(*h, "--json", "get", "odd\nns", "line\u2028sep"))
    assert len(got.splitlines()) == 1
    ns_lines = ok(run(*h, "ns")).splitlines()
    assert any(line.startswith('"odd\\nns"') for line in ns_lines), ns_lines
    # In the table's first column, a name with a space is quoted too (else where would it end?)
    ok(run(*h, "put", "sp ace", "k", "{}"))
    ns_lines = ok(run(*h, "ns")).splitlines()
    assert any(line.startswith('"sp ace"  ') for line in ns_lines), ns_lines
    assert ok(run(*h, "ls", "sp ace")) == "k\n"
    # ...and so is one with a comma in status's list of namespaces.
    ok(run(*h, "put", "a, b", "k", "{}"))
    listed = next(line for line in ok(run(*h, "status")).splitlines() if "namespaces:" in line)
    assert '"a, b"' in listed and '"sp ace"' in listed, listed


def test_documents(run: Run, daemon: DaemonProcess) -> None:
    h = ("--home", str(daemon.home))
    assert ok(run(*h, "put", "docs", "a", '{"title": "x", "n": 1}')) == ""
    assert json.loads(ok(run(*h, "get", "docs", "a"))) == {"n": 1, "title": "x"}
    got = json.loads(ok(run(*h, "--json", "get", "docs", "a")))
    assert got == {"n": 1, "title": "x"}  # --json get prints the document itself
    ok(run(*h, "put", "docs", "b", "-", stdin='{"from": "stdin"}'))
    assert json.loads(ok(run(*h, "get", "docs", "b"))) == {"from": "stdin"}
    ops = '[{"op":"make","path":["c"],"type":"counter"},{"op":"inc","path":["c"],"by":3}]'
    ok(run(*h, "patch", "docs", "b", ops))
    ok(run(*h, "patch", "docs", "b", "-", stdin='[{"op":"inc","path":["c"],"by":-1}]'))
    assert json.loads(ok(run(*h, "get", "docs", "b")))["c"] == 2
    assert ok(run(*h, "ls", "docs")) == "a\nb\n"
    assert ok(run(*h, "ls", "docs", "b")) == "b\n"
    assert json.loads(ok(run(*h, "--json", "ls", "docs"))) == {"keys": ["a", "b"]}
    out = ok(run(*h, "ns"))
    assert "docs" in out
    listed = json.loads(ok(run(*h, "--json", "ns")))["namespaces"]
    assert {"ns": "docs", "devices": [], "documents": 2} in listed  # (other tests' too)
    with_conflicts = json.loads(ok(run(*h, "get", "docs", "a", "--conflicts")))
    assert with_conflicts == {"value": {"n": 1, "title": "x"}, "conflicts": []}
    assert json.loads(ok(run(*h, "--json", "del", "docs", "a"))) == {"ok": True, "existed": True}
    status, out, err = run(*h, "del", "docs", "a")
    assert status == 0
    assert "did not exist" in err
    fails(run(*h, "get", "docs", "a"), 1, "no document 'a'")
    status, out, _err = run(*h, "--json", "get", "docs", "a")
    assert status == 1
    assert json.loads(out) is None


def test_daemon_errors_exit_1_with_one_line(run: Run, daemon: DaemonProcess) -> None:
    h = ("--home", str(daemon.home))
    ok(run(*h, "put", "docs", "e", '{"r": 1}'))
    fails(run(*h, "patch", "docs", "e", '[{"op":"inc","path":["r"],"by":1}]'), 1, "counter")
    fails(run(*h, "put", "docs", "e", "[1, 2]"), 2, "must be a JSON object")
    fails(run(*h, "patch", "docs", "e", '{"op": "inc"}'), 2, "must be a JSON array")
    fails(run(*h, "patch", "docs", "e", '[{"op": "nope", "path": []}]'), 2, "ops[0].op")
    fails(run(*h, "untrust", OTHER), 1, "not trusted")
    fails(run(*h, "share", "docs", OTHER), 1, "not trusted")


def test_devices_and_sharing(run: Run, daemon: DaemonProcess) -> None:
    h = ("--home", str(daemon.home))
    assert "no known devices" in ok(run(*h, "peers"))
    ok(run(*h, "trust", OTHER.lower(), "--name", "phone", "--addr", "10.1.1.1:7400"))
    out = ok(run(*h, "peers"))
    assert OTHER in out
    assert "phone" in out
    assert "10.1.1.1:7400" in out
    peers = json.loads(ok(run(*h, "--json", "peers")))
    assert peers["peers"][0]["id"] == OTHER
    assert peers["pending"] == []
    ok(run(*h, "share", "shared", OTHER))
    ok(run(*h, "put", "shared", "x", "{}"))
    assert OTHER in ok(run(*h, "ns"))
    assert "nothing to wait for" in ok(run(*h, "sync", "shared", "--timeout", "1"))
    sync = json.loads(ok(run(*h, "--json", "sync", "shared")))
    assert sync == {"acked_by": [], "pending": []}
    fails(run(*h, "sync", "shared", "--timeout", "-1"), 2, "--timeout")
    ok(run(*h, "unshare", "shared", OTHER))
    ok(run(*h, "untrust", OTHER))
    assert "no known devices" in ok(run(*h, "peers"))


def test_folder_is_not_available_yet(run: Run, daemon: DaemonProcess) -> None:
    fails(run("--home", str(daemon.home), "folder", "ls"), 1, "not available")


def test_watch_streams_json_lines(daemon: DaemonProcess, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    watch = subprocess.Popen(
        [sys.executable, "-m", "syncd", "--home", str(daemon.home), "watch", "w", "--initial"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        daemon.call("put", ns="w", key="first", value={"v": 1})
        assert watch.stdout is not None
        line: Any = json.loads(watch.stdout.readline())
        # Either the initial snapshot or the live change brought "first" (both are fine).
        assert line["key"] == "first"
        assert line["value"] == {"v": 1}
        daemon.call("delete", ns="w", key="first")
        while True:
            line = json.loads(watch.stdout.readline())
            if line.get("deleted"):
                break
        assert line == {
            "ns": "w",
            "key": "first",
            "value": None,
            "deleted": True,
            "origin": "local",
        }
    finally:
        watch.terminate()
        watch.communicate(timeout=30)


def test_console_script_and_python_m_agree(daemon: DaemonProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env["SYNCD_HOME"] = str(daemon.home)
    a = subprocess.run(
        [sys.executable, "-m", "syncd", "--json", "status"], capture_output=True, text=True, env=env
    )
    assert a.returncode == 0, a.stderr
    exe = Path(sys.executable).parent / "syncd"
    if exe.exists():
        b = subprocess.run([str(exe), "--json", "status"], capture_output=True, text=True, env=env)
        assert b.returncode == 0, b.stderr
        assert json.loads(a.stdout) == json.loads(b.stdout)
    missing = subprocess.run(
        [sys.executable, "-m", "syncd", "--home", "/nonexistent/x", "get", "n", "k"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert missing.returncode == 3
    assert missing.stderr.count("\n") == 1
    assert "/nonexistent/x/syncd.sock" in missing.stderr


def test_home_on_the_command_line_beats_syncd_socket(
    run: Run, daemon: DaemonProcess, tmp_path: Path
) -> None:
    # A user who exported $SYNCD_SOCKET for a system instance and names another home on the
    # command line means that home (the contract: its socket is DIR/syncd.sock).
    run.monkeypatch.setenv("SYNCD_SOCKET", str(tmp_path / "system.sock"))
    status = json.loads(ok(run("--home", str(daemon.home), "--json", "status")))
    assert status["device_id"]
    fails(run("--json", "status"), 3, str(tmp_path / "system.sock"))  # no --home: the variable


def test_ctrl_c_while_the_cli_is_still_loading_exits_130_without_a_traceback() -> None:
    # A SIGINT while syncd.cli is being imported (the first moments of `syncd watch`) comes
    # before the CLI's own handlers exist; the console script's entry point catches it.
    code = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'syncd.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from syncd.console import main\n"
        "sys.exit(main())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (130, "syncd: interrupted\n")
    scripts = tomllib.loads(Path(__file__).parents[1].joinpath("pyproject.toml").read_text())
    assert scripts["project"]["scripts"]["syncd"] == "syncd.console:main"


# --- audit fixes -----------------------------------------------------------------------------


def shell_cli(*argv: str, redirect: str) -> subprocess.CompletedProcess[str]:
    """``python -m syncd ARGV`` with stdout redirected by the shell (``>&-``, ``>/dev/full``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {redirect}', "sh", sys.executable, "-m", "syncd", *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def fails_subprocess(proc: subprocess.CompletedProcess[str], status: int, fragment: str) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    fails((proc.returncode, proc.stdout, proc.stderr), status, fragment)


def test_init_on_a_home_that_cannot_be_a_directory(run: Run, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    fails(run("--home", str(afile / "x"), "init"), 1, f"cannot create {afile / 'x'}: Not a dir")
    fails(run("--home", str(afile), "init"), 1, f"{afile} is not a directory")


@pytest.mark.parametrize(
    ("argv", "redirect", "fragment"),
    [
        (["ls", "out"], ">&-", "standard output is closed"),
        (["status"], ">&-", "standard output is closed"),
        (["--json", "get", "out", "k"], ">&-", "standard output is closed"),
        (["id"], ">&-", "standard output is closed"),
        (["ls", "out"], ">/dev/full", "No space left on device"),
        (["id"], ">/dev/full", "No space left on device"),
        (["--json", "status"], ">/dev/full", "No space left on device"),
    ],
)
def test_output_that_cannot_be_written_is_one_line(
    daemon: DaemonProcess, argv: list[str], redirect: str, fragment: str
) -> None:
    if redirect == ">/dev/full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    daemon.call("put", ns="out", key="k", value={"v": 1})
    proc = shell_cli("--home", str(daemon.home), *argv, redirect=redirect)
    fails_subprocess(proc, 1, f"cannot write output: {fragment}")


@pytest.mark.parametrize("option", ["--version", "--help"])
def test_help_and_version_that_cannot_be_written_exit_1(option: str) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    proc = shell_cli(option, redirect=">/dev/full")
    fails_subprocess(proc, 1, "cannot write output: No space left on device")


def test_ctrl_c_while_parsing_the_arguments_exits_130(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("argparse.ArgumentParser.parse_args", interrupted)
    assert run("status") == (130, "", "syncd: interrupted\n")


def test_a_closed_pipe_still_ends_quietly(daemon: DaemonProcess) -> None:
    daemon.call("put", ns="pipe", key="k", value={"v": 1})
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write gets EPIPE, as when `head -1` has exited
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
        proc = subprocess.run(
            [sys.executable, "-m", "syncd", "--home", str(daemon.home), "ls", "pipe"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["put", "n", "k", '{"v": 1e400}'], "the document: the number 1e400 is too large"),
        (["put", "n", "k", '{"v": -1e400}'], "the number -1e400 is too large"),
        (["put", "n", "k", '{"v": NaN}'], "NaN is not valid JSON"),
        (["put", "n", "k", '{"v": 18446744073709551616}'], "outside the range"),
        (["put", "n", "k", '{"v": [-18446744073709551616]}'], "outside the range"),
        (["put", "n", "k", '{"v": ' + "[" * 40 + "]" * 40 + "}"], "nests deeper than 32"),
        (["put", "n", "k", '{"s": "\\udcff"}'], "the document is not valid Unicode text"),
        (["put", "n", "k", '{"\\ud800": 1}'], "the document is not valid Unicode text"),
        (["patch", "n", "k", '[{"op": "nope", "path": []}]'], "the operation list: ops[0].op"),
        (["patch", "n", "k", '[{"op": "set", "path": ["a"]}]'], "needs 'value'"),
        (["patch", "n", "k", '[{"op": "set", "path": ["a"], "value": 1e400}]'], "1e400"),
        (
            ["patch", "n", "k", '[{"op": "add", "path": ["s"], "value": 18446744073709551616}]'],
            "ops[0].value holds the integer",
        ),
        (
            ["patch", "n", "k", '[{"op": "inc", "path": ["c"], "by": 18446744073709551616}]'],
            "2**64",
        ),
        (
            ["patch", "n", "k", '[{"op": "make", "path": ["c"], "type": "counter", "value": "x"}]'],
            "ops[0].value must be an integer to make a counter",
        ),
        (
            ["patch", "n", "k", '[{"op": "insert", "path": ["t"], "index": 0, "text": "\\udfff"}]'],
            "the operation list is not valid Unicode text",
        ),
        (["patch", "n", "k", '{"op": "inc"}'], "the operation list must be a JSON array"),
        (["put", "n", "k", "5"], "the document must be a JSON object, not a number"),
        (["put", "n", "k", '"text"'], "the document must be a JSON object, not a string"),
        (["put", "n", "k", "true"], "the document must be a JSON object, not a boolean"),
        (["put", "n", "k", "null"], "the document must be a JSON object, not null"),
        (["put", "n", "k", "[]"], "the document must be a JSON object, not an array"),
        (["patch", "n", "k", "{}"], "the operation list must be a JSON array, not an object"),
        (["put", "n", "k", "{"], "the document is not valid JSON"),
        (["put", "n", "k", "[" * 100_000], "the document is nested too deeply"),
        # a byte that is not UTF-8 in argv reaches Python as a lone surrogate
        (["put", "n", "k", '{"s": "\udcff"}'], "the document is not valid UTF-8 text"),
    ],
)
def test_json_the_daemon_cannot_store_is_refused_before_asking_it(
    run: Run, tmp_path: Path, argv: list[str], fragment: str
) -> None:
    # No daemon runs at this home: exit 2 (not 3) shows the CLI refused it on its own.
    fails(run("--home", str(tmp_path), *argv), 2, fragment)


def test_json_from_stdin_is_checked_the_same_way(run: Run, tmp_path: Path) -> None:
    fails(
        run("--home", str(tmp_path), "put", "n", "k", "-", stdin='{"v": 1e400}'),
        2,
        "the document (from stdin): the number 1e400",
    )


def test_stdin_that_is_not_utf8_or_closed_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    argv = [sys.executable, "-m", "syncd", "--home", str(tmp_path), "put", "n", "k", "-"]
    bad = subprocess.run(argv, input=b'{"s": "\xff"}', capture_output=True, env=env, timeout=60)
    fails_subprocess(
        subprocess.CompletedProcess(bad.args, bad.returncode, "", bad.stderr.decode()),
        2,
        "the document (from stdin) is not valid UTF-8",
    )
    closed = shell_cli("--home", str(tmp_path), "put", "n", "k", "-", redirect="<&-")
    fails_subprocess(closed, 2, "the document (from stdin): standard input is closed")


def test_json_at_the_limits_is_stored(run: Run, daemon: DaemonProcess) -> None:
    h = ("--home", str(daemon.home))
    value = '{"big": 18446744073709551615, "small": -18446744073709551615, "e": "\\ud83d\\ude00"}'
    ok(run(*h, "put", "limits", "k", value))
    got = json.loads(ok(run(*h, "get", "limits", "k")))
    assert got == {"big": 2**64 - 1, "small": -(2**64) + 1, "e": "\U0001f600"}


@pytest.mark.parametrize(
    "argv",
    [
        ["init", "--listen", " 1.2.3.4:80"],
        ["init", "--listen", "999.1.1.1:80"],
        ["init", "--listen", "0.0.0.0:0"],
        ["init", "--listen", "a_b.example:80"],
        ["init", "--name", "a\x85b"],
        ["init", "--name", "a\u200bb"],
        ["init", "--name", "   "],
        ["trust", OTHER, "--addr", "\udcff:1"],
        ["trust", OTHER, "--addr", "[::1]:0"],
        ["trust", OTHER, "--name", "a\u200bb"],
        ["trust", OTHER, *(a for port in range(1, 66) for a in ("--addr", f"10.0.0.1:{port}"))],
    ],
)
def test_bad_addresses_and_names_are_usage_errors(
    run: Run, tmp_path: Path, argv: list[str]
) -> None:
    option = next(a for a in argv if a.startswith("--"))
    fails(run("--home", str(tmp_path / "h"), *argv), 2, option)
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("command", [["init"], ["trust", OTHER]])
def test_a_name_of_bytes_that_are_not_utf8_is_said_to_be_so(
    run: Run, tmp_path: Path, command: list[str]
) -> None:
    """A byte that is not UTF-8 in the arguments reaches Python as a lone surrogate: the
    error says what the user gave, not which escape Python made of it."""
    name = os.fsdecode(b"lap\x85")
    status, _out, err = run("--home", str(tmp_path / "h"), *command, "--name", name)
    assert (status, err) == (2, "syncd: --name is not valid UTF-8 text\n")


def test_init_keeps_an_existing_config_and_says_so(run: Run, tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text('name = "mine"\n')
    status, out, err = run("--home", str(home), "init", "--name", "other", "--listen", "h:1")
    assert status == 0, err
    assert (home / "config.toml").read_text() == 'name = "mine"\n'
    assert out.strip() == ok(run("--home", str(home), "id")).strip()
    created, not_applied = err.splitlines()
    assert created == f"syncd: created identity in {home}; kept the existing {home}/config.toml"
    assert not_applied.startswith("syncd: not applied")
    assert "--name 'other'" in not_applied
    assert "--listen 'h:1'" in not_applied


def test_init_with_matching_options_on_an_existing_config(run: Run, tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text('name = "mine"\n')
    status, out, err = run("--home", str(home), "--json", "init", "--name", "mine")
    assert status == 0, err
    assert json.loads(out)["created"] is True
    assert err == ""


def test_init_with_a_bad_existing_config_creates_nothing(run: Run, tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text('nmae = "x"\n')
    fails(run("--home", str(home), "init"), 1, "unknown key `nmae`")
    assert not (home / "key.pem").exists()


def test_init_again_with_a_broken_config_warns_and_exits_0(run: Run, tmp_path: Path) -> None:
    # "Run again: changes nothing, says so, exits 0" holds even when the config has been
    # broken since; the problem is named, as `syncd run` would refuse to start.
    home = tmp_path / "h"
    device_id = ok(run("--home", str(home), "init")).strip()
    (home / "config.toml").write_text('nmae = "x"\n')
    status, out, err = run("--home", str(home), "init")
    assert (status, out.strip()) == (0, device_id)
    assert "already initialized" in err and "nothing changed" in err
    assert "warning:" in err and "unknown key `nmae`" in err and "refuses to start" in err
    assert (home / "config.toml").read_text() == 'nmae = "x"\n'


def test_unknown_option_of_a_command_points_at_its_help(run: Run, tmp_path: Path) -> None:
    home = str(tmp_path)
    fails(run("--home", home, "status", "--bogus"), 2, "(see `syncd status --help`)")
    fails(run("--home", home, "ls", "n", "p", "extra"), 2, "(see `syncd ls --help`)")
    fails(run("--home", home, "folder", "rm", "n", "-x"), 2, "(see `syncd folder rm --help`)")
    fails(run("--home", home, "--bogus", "status"), 2, "(see `syncd --help`)")


def test_empty_home_is_an_error_but_empty_env_is_unset(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fails(run("--home", "", "id"), 2, "--home must not be empty")
    fails(run("id", "--home", ""), 2, "--home must not be empty")
    fails(run("--socket", "", "status"), 2, "--socket must not be empty")
    monkeypatch.setenv("SYNCD_HOME", "")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    fails(run("id"), 1, f"no identity in {tmp_path / 'state' / 'syncd'}")


def test_log_level_ignores_case_and_refuses_unknown_levels() -> None:
    from syncd.cli import build_parser

    assert build_parser().parse_args(["run", "--log-level", "WARNING"]).log_level == "warning"
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "--log-level", "loud"])
    assert info.value.code == 2


def test_the_cli_does_not_load_trio_crypto_or_the_crdt_engine_up_front() -> None:
    # Every `syncd get` pays for its imports: the heavy ones wait for the commands that need them.
    code = (
        "import sys, syncd.cli, syncd.client; "
        "print(sorted(m for m in ('trio', 'cryptography', 'syncd.crdt') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_watch_reports_deletions_it_missed_while_behind(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "fake.sock"
    listener = bind_unix(path)

    def fake_daemon() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as lines:

            def answer(method: str, result: object) -> None:
                request = json.loads(lines.readline())
                assert request["method"] == method, request
                conn.sendall(
                    json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode()
                    + b"\n"
                )

            def note(method: str, params: dict[str, object]) -> None:
                conn.sendall(
                    json.dumps({"jsonrpc": "2.0", "method": method, "params": params}).encode()
                    + b"\n"
                )

            answer("watch", {"subscription": 1})
            for key in ("a", "b"):
                change: dict[str, object] = {"ns": "n", "key": key, "value": {}}
                note("change", {"subscription": 1, **change, "deleted": False, "origin": "local"})
            note("overflow", {"subscription": 1})
            answer("watch", {"subscription": 2})  # subscribed again first, then
            answer("list", {"keys": ["b"]})  # "a" was deleted while the watcher was behind
            note(
                "change",
                {"subscription": 2, "initial": True, **change, "key": "b", "deleted": False},
            )

    thread = threading.Thread(target=fake_daemon, daemon=True)
    thread.start()
    try:
        status, out, err = run("--socket", str(path), "watch", "n")
        assert status == 1  # the fake daemon closes the connection at the end
    finally:
        thread.join(10)
        listener.close()
    assert "fell behind" in err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(n["key"], n["deleted"]) for n in lines] == [
        ("a", False),
        ("b", False),
        ("a", True),
        ("b", False),
    ]
    assert lines[2]["origin"] is None


def _answering_daemon(path: Path, answers: list[list[dict[str, object]]]) -> threading.Thread:
    """A fake daemon on ``path`` that serves one request per connection: it sends the
    messages of each item of ``answers`` in turn (``"id": "same"`` is replaced by the
    request's id), then waits for the client to hang up."""
    listener = bind_unix(path)

    def serve() -> None:
        with listener:
            for messages in answers:
                conn, _ = listener.accept()
                with conn, conn.makefile("rb") as lines:
                    request = json.loads(lines.readline())
                    for message in messages:
                        msg = {"jsonrpc": "2.0", **message}
                        if msg.get("id") == "same":
                            msg["id"] = request["id"]
                        conn.sendall(json.dumps(msg).encode() + b"\n")
                    lines.readline()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_an_answer_that_is_not_syncd_s_is_one_line_not_a_traceback_or_a_hang(
    run: Run, tmp_path: Path
) -> None:
    # --socket pointing at another JSON-RPC service, or at a daemon of another version.
    path = tmp_path / "other.sock"
    peer = {"id": "X", "name": "n", "trusted": True, "connected": False, "addresses": []}
    cases: list[tuple[tuple[str, ...], dict[str, object], str]] = [
        (("ls", "n"), {"result": {"nope": 1}}, "unexpected answer to list from"),
        (("ls", "n"), {"result": {"keys": [1]}}, "unexpected answer to list"),
        (("status",), {"result": [1, 2]}, "unexpected answer to status from"),
        (("get", "n", "k"), {"result": None}, "unexpected answer to get"),
        (("ns",), {"result": {"namespaces": [{"ns": "n"}]}}, "unexpected answer to namespaces"),
        (("put", "n", "k", "{}"), {"result": "ok"}, "unexpected answer to put"),
        (("ls", "n"), {"id": 99, "result": {"keys": []}}, "never sent (id 99)"),
        (("ls", "n"), {"id": "abc", "result": {"keys": []}}, "never sent (id 'abc')"),
    ]
    thread = _answering_daemon(path, [[{"id": "same", **answer}] for _, answer, _ in cases])
    for argv, _, fragment in cases:
        fails(run("--socket", str(path), *argv), 1, fragment)
    thread.join(10)
    assert not thread.is_alive()
    # A peer seen at a time no clock shows is shown, not a traceback.
    path = tmp_path / "peers.sock"
    odd = [{**peer, "last_seen": when} for when in (1e20, math.nan, None)]
    thread = _answering_daemon(path, [[{"id": "same", "result": {"peers": odd, "pending": []}}]])
    out = ok(run("--socket", str(path), "peers"))
    assert out.count("\nX ") == 3 and "?" in out and "never" in out
    thread.join(10)


def test_watch_with_a_notification_that_is_not_syncd_s_is_one_line(
    run: Run, tmp_path: Path
) -> None:
    path = tmp_path / "other.sock"
    subscribed: dict[str, object] = {"id": "same", "result": {"subscription": 1}}
    odd: dict[str, object] = {"method": "change", "params": "oops"}
    thread = _answering_daemon(path, [[subscribed, odd]])
    fails(run("--socket", str(path), "watch", "n"), 1, "unexpected notification from")
    thread.join(10)


def test_global_options_after_the_command(run: Run, tmp_path: Path) -> None:
    home, other = str(tmp_path / "a"), str(tmp_path / "b")
    device_id = ok(run("init", "--home", home)).strip()  # after the command: taken
    assert ok(run("--home", home, "id", "--home", home)).strip() == device_id  # same: fine
    assert ok(run("id", "--json", "--home", home)) == f'{{"device_id": "{device_id}"}}\n'
    # Two different homes: neither is silently ignored.
    fails(run("--home", other, "id", "--home", home), 2, "--home given twice")
    fails(run("--socket", "/x/a.sock", "status", "--socket", "/x/b.sock"), 2, "--socket given")
    assert not Path(other).exists()
