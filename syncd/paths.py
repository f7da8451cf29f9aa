"""Where an instance keeps its files: ``--home``, systemd's directories, or XDG places.

Precedence, first match wins, per directory:

1. ``--home DIR`` (or ``$SYNCD_HOME``): config, state and socket all live in ``DIR``.
2. systemd: ``$CONFIGURATION_DIRECTORY``, ``$STATE_DIRECTORY``, ``$RUNTIME_DIRECTORY`` (the first
   entry when systemd lists several, separated by ``:``).
3. XDG: ``$XDG_CONFIG_HOME/syncd`` (default ``~/.config/syncd``), ``$XDG_STATE_HOME/syncd``
   (default ``~/.local/state/syncd``), ``$XDG_RUNTIME_DIR/syncd``; with no
   ``$XDG_RUNTIME_DIR`` the socket lives in the state directory.

``--socket`` (or ``$SYNCD_SOCKET``) overrides only the socket a *client* connects to
(:attr:`Paths.socket`); the daemon always binds :attr:`Paths.daemon_socket` in its runtime
directory, so pointing a client elsewhere can never move or replace another instance's socket.
A ``--home`` given on the command line beats ``$SYNCD_SOCKET`` (a flag names the instance
meant now; the variable is a standing default, e.g. for a system instance), not ``--socket``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.toml"
SOCKET_FILE = "syncd.sock"
LOCK_FILE = "syncd.lock"
DATABASE_FILE = "syncd.db"


@dataclass(frozen=True)
class Paths:
    """The directories of one instance and the files in them."""

    config_dir: Path
    state_dir: Path
    runtime_dir: Path
    socket: Path
    """The socket a client connects to (``--socket``/``$SYNCD_SOCKET``, else the daemon's)."""

    @property
    def daemon_socket(self) -> Path:
        """The socket the daemon binds: in the runtime directory, whatever ``--socket`` says."""
        return self.runtime_dir / SOCKET_FILE

    @property
    def config_file(self) -> Path:
        """``config.toml``."""
        return self.config_dir / CONFIG_FILE

    @property
    def lock_file(self) -> Path:
        """The single-instance lock (in the state directory: it guards the data)."""
        return self.state_dir / LOCK_FILE

    @property
    def database(self) -> Path:
        """The replica's SQLite database."""
        return self.state_dir / DATABASE_FILE


def _first(value: str | None) -> Path | None:
    """The first directory of a ``:``-separated list; a relative one counts as unset (the XDG
    base directory spec says to ignore it, rather than resolve it against the current one)."""
    if not value:
        return None
    first = value.split(":")[0]
    return Path(first) if first and os.path.isabs(first) else None


def resolve_paths(
    home: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    socket: str | os.PathLike[str] | None = None,
) -> Paths:
    """The instance's paths for ``--home`` and ``--socket`` (or None) in environment ``env``
    (default os.environ)."""
    env = os.environ if env is None else env
    if not socket and not home:
        socket = env.get("SYNCD_SOCKET") or None
    home = home or env.get("SYNCD_HOME") or None
    if home is not None:
        root = Path(home).expanduser().absolute()
        sock = Path(socket).absolute() if socket else root / SOCKET_FILE
        return Paths(root, root, root, sock)
    user_home = Path(env.get("HOME") or os.path.expanduser("~"))
    xdg_config = _first(env.get("XDG_CONFIG_HOME")) or user_home / ".config"
    xdg_state = _first(env.get("XDG_STATE_HOME")) or user_home / ".local" / "state"
    config_dir = _first(env.get("CONFIGURATION_DIRECTORY")) or xdg_config / "syncd"
    state_dir = _first(env.get("STATE_DIRECTORY")) or xdg_state / "syncd"
    runtime_dir = _first(env.get("RUNTIME_DIRECTORY"))
    if runtime_dir is None:
        xdg_runtime = _first(env.get("XDG_RUNTIME_DIR"))
        runtime_dir = xdg_runtime / "syncd" if xdg_runtime else state_dir
    sock = Path(socket).absolute() if socket else runtime_dir / SOCKET_FILE
    return Paths(config_dir, state_dir, runtime_dir, sock)
