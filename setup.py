"""Build hook: compile the CRDT engine and the replica with mypyc, where that can be done.

``pip install .`` builds a wheel whose modules in :data:`COMPILED` are compiled by mypyc from
this same, type-checked source: a write spends about a third less CPU (bench/README.md).
Everything else about the project is in pyproject.toml.

- No C compiler, no Python headers, or mypyc failing for any reason (its type check runs
  first, against the dependencies pyproject.toml lists for the build): a warning, and the
  Python source is installed instead, which behaves the same (slower).
- ``SYNCD_PURE_PYTHON=1``: do not compile.
- ``SYNCD_REQUIRE_COMPILED=1`` (CI): a failure to compile fails the build instead.
- An editable install (``pip install -e .``, for development) is never compiled, so that an
  edited module takes effect at once rather than being shadowed by a stale compiled one.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

COMPILED = [
    "syncd/crdt/codec.py",
    "syncd/crdt/context.py",
    "syncd/crdt/document.py",
    "syncd/crdt/dots.py",
    "syncd/crdt/mutate.py",
    "syncd/crdt/ops.py",
    "syncd/crdt/remote.py",
    "syncd/crdt/stores.py",
    "syncd/replica/cache.py",
    "syncd/replica/core.py",
    "syncd/replica/doclog.py",
    "syncd/replica/ranges.py",
    "syncd/replica/store.py",
    "syncd/replica/writer.py",
]
"""The modules on the write path that compile to the same behaviour. (The sequence modules
build objects without calling ``__init__``, and the trio layer relies on trio's
introspection of coroutines: they stay Python. The codec, which decodes what peers send,
is compiled: the tests of hostile encodings run on both builds in CI.)"""

REQUIRED = os.environ.get("SYNCD_REQUIRE_COMPILED") == "1"


def _warn(message: str) -> None:
    print(f"syncd setup: {message}; installing the Python source instead", file=sys.stderr)


def _ext_modules() -> list[Any]:
    if os.environ.get("SYNCD_PURE_PYTHON") == "1" or "editable_wheel" in sys.argv:
        return []
    try:
        from mypyc.build import mypycify

        return list(mypycify(COMPILED, opt_level="3"))
    except (Exception, SystemExit) as exc:  # mypy missing, or its check failed (it exits)
        if REQUIRED:
            raise
        _warn(f"mypyc could not translate the modules ({exc!r})")
        return []


class OptionalBuildExt(build_ext):
    """Builds every compiled module or none: on any failure, the built ones are removed (the
    shared library and the per-module stubs only work together)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if REQUIRED:
                raise
            for path in self.get_outputs():
                if os.path.exists(path):
                    os.remove(path)
            _warn(f"the compiled modules could not be built ({exc})")


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
