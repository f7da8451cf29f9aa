"""``syncd run``: one trio nursery holding the replica, the local API, and (later) the network.

Start-up order: signals are caught first (so an early SIGTERM is a clean exit), then the
single-instance lock, identity (created on an empty home), config, store, socket. READY=1 is
sent only after the daemon has answered a ``status`` request on its own socket. SIGTERM/SIGINT
stop accepting, let requests in flight finish, close the store, remove the socket, exit 0.
SIGHUP reloads config.toml (a bad file is logged and the old config kept).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import trio

from syncd import __version__, compiled
from syncd.config import (
    ApiConfig,
    Config,
    ConfigError,
    StoreConfig,
    default_name,
    initial_config_text,
    load_config,
)
from syncd.daemon.held_signals import take_held_signals
from syncd.daemon.logs import set_level
from syncd.daemon.methods import Service
from syncd.daemon.notify import Notifier
from syncd.daemon.server import ApiServer
from syncd.daemon.store import NoNetwork, Store
from syncd.daemon.unixsock import (
    NotASocketError,
    SocketInUseError,
    bind_unix,
    short_address,
)
from syncd.daemon.watch import WatchHub
from syncd.errors import SyncdError
from syncd.gcpolicy import configure_gc, freeze_startup_objects
from syncd.identity import (
    Identity,
    SharedDirectoryError,
    ensure_private_dir,
    load_or_create_identity,
    write_file_durably,
)
from syncd.paths import Paths

log = logging.getLogger("syncd.daemon")

StoreFactory = Callable[[Paths, Identity, StoreConfig], AbstractAsyncContextManager[Store]]


class DaemonError(SyncdError):
    """The daemon cannot start (another instance, unusable directories, ...)."""

    reason = "daemon"


class InstanceLock:
    """``flock`` on the state directory's lock file: one daemon per home."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DaemonError` naming the lock file."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DaemonError(f"cannot open the lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DaemonError(
                f"another syncd is already running with this home (lock {self.path} is held)",
                reason="already_running",
            ) from None
        with contextlib.suppress(OSError):  # the pid is for people; a full disk is said later
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


SETUP_LOCK_PATIENCE_S = 30.0
"""How long ``syncd run`` waits for another process setting up its home (an ``init``, which
holds the lock for the moment it takes to make a key and an empty database)."""


@contextlib.contextmanager
def home_setup_lock(paths: Paths) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the state directory (which must exist) while a home is
    made or checked: ``syncd init`` holds it throughout (waiting for another holder), ``syncd
    run`` while it loads or creates the identity, config and database
    (:func:`waiting_home_setup_lock`). So two of them started at once on a new home make one
    identity (not one each, with a device ID printed that no longer exists), and neither
    takes the other's half-made home for one whose database was lost.
    """
    fd = _open_state_dir(paths)
    try:
        _lock(fd, paths, wait=True)
        yield
    finally:
        os.close(fd)  # (releases the lock)


@contextlib.asynccontextmanager
async def waiting_home_setup_lock(
    paths: Paths, patience_s: float = SETUP_LOCK_PATIENCE_S
) -> AsyncIterator[None]:
    """:func:`home_setup_lock` for the daemon: waits without blocking the event loop, and for
    at most ``patience_s`` (an ``init`` stopped with the lock held would hold up the daemon
    for good, with signals only acted on once it is ready)."""
    fd = _open_state_dir(paths)
    try:
        deadline = trio.current_time() + patience_s
        while not _lock(fd, paths, wait=False):
            if trio.current_time() >= deadline:
                raise DaemonError(
                    f"{paths.state_dir} is being set up by another process, which has held "
                    f"its lock for {patience_s:g} s (a `syncd init` that was stopped?)"
                )
            await trio.sleep(0.02)
        yield
    finally:
        os.close(fd)


def _open_state_dir(paths: Paths) -> int:
    try:
        return os.open(paths.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise DaemonError(f"cannot open {paths.state_dir}: {exc.strerror}") from None


def _lock(fd: int, paths: Paths, *, wait: bool) -> bool:
    """Take the exclusive ``flock`` of ``fd``; False if another holds it and not ``wait``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # (a file system without locks)
        raise DaemonError(f"cannot lock {paths.state_dir}: {exc.strerror}") from None
    return True


def create_database(paths: Paths) -> None:
    """Make the home's (empty) database unless a daemon holds it open (it exists then)."""
    from syncd.replica import DatabaseLockedError  # slow to import
    from syncd.replica import Store as Replica

    with contextlib.suppress(DatabaseLockedError):
        Replica(paths.database).close()


class Settings:
    """The current configuration; SIGHUP swaps it."""

    def __init__(self, config: Config, log_level_override: str | None) -> None:
        self.config = config
        self.log_level_override = log_level_override

    @property
    def log_level(self) -> str:
        """The effective log level (``--log-level`` wins over the file)."""
        return self.log_level_override or self.config.log_level

    def api(self) -> ApiConfig:
        """Limits for new connections."""
        return self.config.api


Report = Callable[[str], None]
"""Where a notice about the user's files goes (the log for ``run``, stderr for ``init``)."""


def make_private_dir(path: Path, report: Report = log.warning) -> None:
    """:func:`ensure_private_dir`, failing with :class:`DaemonError` that says what is wrong
    instead of a bare ``OSError``, and reporting a mode it changed."""
    try:
        changed = ensure_private_dir(path)
    except SharedDirectoryError as exc:
        raise DaemonError(str(exc)) from None
    except OSError as exc:
        if path.exists() and not path.is_dir():
            raise DaemonError(f"{path} is not a directory") from None
        if path.is_dir():
            raise DaemonError(f"cannot make {path} private (mode 0700): {exc.strerror}") from None
        raise DaemonError(f"cannot create {path}: {exc.strerror}") from None
    if changed is not None:
        report(f"made {path} private: mode 0700 (it was {changed:04o})")


def prepare_home(paths: Paths, report: Report = log.warning) -> tuple[Identity, bool]:
    """Create the state directory (0700) and the identity if missing.

    Returns (identity, created). Used by ``syncd init`` and by ``syncd run`` on an empty home.
    """
    make_private_dir(paths.state_dir, report)
    try:
        identity, created = load_or_create_identity(paths.state_dir)
    except PermissionError as exc:
        raise DaemonError(f"cannot use {exc.filename}: permission denied") from None
    if identity.certificate_reissued:
        report(f"re-issued the certificate {identity.cert_path} from the key")
    return identity, created


def write_initial_config(paths: Paths, name: str, listen: str) -> bool:
    """Write config.toml unless it exists; returns whether it was written.

    Raises :class:`DaemonError` when the file cannot be written.
    """
    if paths.config_file.exists():
        return False
    if not paths.config_dir.is_dir():
        make_private_dir(paths.config_dir)
    # An existing config directory is left as it is: it may be the admin's, readable but not
    # writable for us (/etc/syncd/USER under the system unit).
    try:  # durably: `syncd init --name X` survives a power cut
        write_file_durably(paths.config_file, initial_config_text(name, listen).encode(), 0o644)
    except OSError as exc:
        raise DaemonError(f"cannot write {paths.config_file}: {exc.strerror}") from None
    return True


async def probe_socket(path: Path) -> dict[str, object]:
    """Ask the daemon at ``path`` for its status (used before READY=1)."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    with sock:
        with short_address(path) as addr:
            await sock.connect(addr)
        await sock.send(b'{"jsonrpc":"2.0","id":0,"method":"status"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = await sock.recv(65536)
            if not chunk:
                raise DaemonError("the API socket closed during the start-up probe")
            buf += chunk
    reply = json.loads(buf)
    if not isinstance(reply, dict) or "result" not in reply:
        error = reply.get("error") if isinstance(reply, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if isinstance(message, str):  # e.g. a damaged database found by the status query
            raise DaemonError(message)
        raise DaemonError(f"the API socket answered the start-up probe with {reply!r}")
    result = reply["result"]
    assert isinstance(result, dict)
    return result


def _summary(
    identity: Identity, socket_path: Path, state: str = "ready", problem: str | None = None
) -> str:
    """The one-line ``STATUS=`` (what ``systemctl status`` shows): it is sent at READY, on
    reload and when the store's problem starts or ends, so it holds nothing that changes in
    between (no connection counts)."""
    line = f"{state}; device {identity.device_id[:7]}; socket {socket_path}; 0 peers connected"
    return line if problem is None else f"{line}; {problem}"


async def _signals(held: list[int], receiver: AsyncIterator[int]) -> AsyncGenerator[int, None]:
    for signum in held:
        yield signum
    async for signum in receiver:
        yield signum


async def run_daemon(
    paths: Paths,
    *,
    store_factory: StoreFactory,
    log_level: str | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status (0 on a clean stop)."""
    configure_gc()
    notifier = Notifier(env)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        lock = InstanceLock(paths.lock_file)
        try:
            if paths.config_file.exists():
                load_config(paths.config_file)  # a bad file stops us before anything is created
            make_private_dir(paths.state_dir)
            lock.acquire()
            async with waiting_home_setup_lock(paths):
                identity, created = prepare_home(paths)
                if not paths.database.exists():
                    if not created:
                        log.warning(
                            "no database at %s although this home has an identity: starting "
                            "with an empty one (if this device had documents, stop syncd and "
                            "restore %s from a backup)",
                            paths.database,
                            paths.database.name,
                        )
                    create_database(paths)  # before an `init` waiting for the lock looks
                if created:
                    log.info("created identity %s in %s", identity.device_id, paths.state_dir)
                    try:
                        write_initial_config(paths, default_name(), "0.0.0.0:7400")
                    except DaemonError as exc:
                        log.info("%s; running with the default settings", exc)
            config = load_config(paths.config_file)
            if config.source is None and not created:
                log.info("no config file at %s: using the defaults", paths.config_file)
            settings = Settings(config, log_level)
            set_level(settings.log_level)
            return await _serve(paths, identity, settings, store_factory, notifier, signals)
        finally:
            lock.release()
            notifier.close()


async def _serve(
    paths: Paths,
    identity: Identity,
    settings: Settings,
    store_factory: StoreFactory,
    notifier: Notifier,
    signals: AsyncIterator[int],
) -> int:
    make_private_dir(paths.runtime_dir)
    socket_path = paths.daemon_socket
    if paths.socket != socket_path:
        log.info("ignoring --socket/$SYNCD_SOCKET %s: it is for clients", paths.socket)
    async with store_factory(paths, identity, settings.config.store) as store:
        hub = WatchHub()
        store.set_value_filter(hub.wants)  # render a change only for a watcher that shows it
        remove_listener = store.add_change_listener(hub.publish)
        store.on_problem(
            lambda problem: notifier.status(_summary(identity, socket_path, problem=problem))
        )
        service = Service(
            store,
            NoNetwork(),
            identity.device_id,
            name=lambda: settings.config.name,
            listen=lambda: settings.config.listen,
        )
        server = ApiServer(service, hub, settings.api)
        try:
            sock = bind_unix(socket_path)
        except NotASocketError as exc:
            raise DaemonError(str(exc)) from None
        except SocketInUseError as exc:
            raise DaemonError(
                f"{exc} (another syncd using the same runtime directory with a different state "
                "directory?); stop it, or give this one its own --home or $XDG_RUNTIME_DIR"
            ) from None
        except OSError as exc:
            raise DaemonError(f"cannot create the API socket {socket_path}: {exc}") from None
        bound = socket_path.stat().st_ino
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, trio.socket.from_stdlib_socket(sock))
                await probe_socket(socket_path)
                freeze_startup_objects()
                log.info(
                    "syncd %s ready (%s): device %s, socket %s",
                    __version__,
                    "compiled" if compiled() else "Python source",
                    identity.device_id,
                    socket_path,
                )
                log.info(
                    "connections to other devices are not in this version yet: trust and "
                    "share settings are kept, but no data is exchanged, and the listen "
                    "address %s is not opened",
                    settings.config.listen,
                )
                notifier.ready(_summary(identity, socket_path))
                nursery.start_soon(notifier.watchdog)
                stream = _signals(take_held_signals(), signals)
                async with contextlib.aclosing(stream):
                    async for signum in stream:
                        if signum == signal.SIGHUP:
                            _reload(paths, settings)
                            notifier.status(_summary(identity, socket_path, problem=store.problem))
                            continue
                        log.info("%s received; stopping", signal.Signals(signum).name)
                        break
                store.on_problem(None)  # (no "ready; ..." after STOPPING=1)
                notifier.stopping()
                await server.shutdown(settings.config.api.shutdown_grace_s)
                nursery.cancel_scope.cancel()
        finally:
            remove_listener()
            store.on_problem(None)
            _remove_socket(socket_path, bound)
    log.info("stopped")
    return 0


def _remove_socket(path: Path, inode: int) -> None:
    """Remove the socket this daemon bound, unless another one has replaced it since."""
    try:
        if path.stat().st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # the next start removes a stale socket; a client sees it refused
        log.warning("cannot remove the socket %s: %s", path, exc.strerror)


def _reload(paths: Paths, settings: Settings) -> None:
    try:
        config = load_config(paths.config_file)
    except ConfigError as exc:
        log.error("config not reloaded, keeping the old one: %s", exc)
        return
    if config.listen != settings.config.listen:
        log.warning(
            "listen address %s takes effect after a restart; until then status shows %s",
            config.listen,
            settings.config.listen,
        )
        config = dataclasses.replace(config, listen=settings.config.listen)  # what `status` shows
    if config.store != settings.config.store:
        log.warning("[store] settings take effect after a restart")
        config = dataclasses.replace(config, store=settings.config.store)
    settings.config = config
    set_level(settings.log_level)
    if paths.config_file.exists():
        log.info("config reloaded from %s", paths.config_file)
    else:
        log.warning("config reloaded: %s does not exist; using the defaults", paths.config_file)
