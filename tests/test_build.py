"""setup.py: the compiled build is optional, and its absence loses nothing but speed.

(CI builds and tests the compiled modules themselves: .ci/run.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import syncd

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    syncd.compiled() or shutil.which("git") is None or not (ROOT / ".git").exists(),
    reason="builds from the git checkout of the source (the compiled run does not need to)",
)


def _copy_of_the_tree(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        target = dest / os.fsdecode(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


def _build_in_place(tree: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    return subprocess.run(
        [sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"],
        cwd=tree,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _runs_compiled(tree: Path) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", "import syncd; print(syncd.compiled())"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip() == "True"


def test_syncd_pure_python_builds_nothing(tmp_path: Path) -> None:
    tree = _copy_of_the_tree(tmp_path)
    done = _build_in_place(tree, SYNCD_PURE_PYTHON="1")
    assert done.returncode == 0, done.stderr
    assert not list(tree.rglob("*.so"))
    assert not _runs_compiled(tree)


@pytest.mark.slow
def test_without_a_compiler_the_python_source_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("mypyc.build", reason="mypyc (from mypy) translates the modules")
    tree = _copy_of_the_tree(tmp_path)
    done = _build_in_place(tree, CC="/bin/false", LDSHARED="/bin/false")
    assert done.returncode == 0, done.stderr
    assert "installing the Python source instead" in done.stderr
    assert not list(tree.rglob("*.so"))  # none half-built: they only work together
    assert not _runs_compiled(tree)
    # ... and a build that must compile says so by failing.
    required = _build_in_place(tree, CC="/bin/false", SYNCD_REQUIRE_COMPILED="1")
    assert required.returncode != 0


@pytest.mark.slow
def test_a_type_check_that_fails_installs_the_python_source(tmp_path: Path) -> None:
    # (A mypy newer than this source, or a dependency's types missing from the build.)
    pytest.importorskip("mypyc.build", reason="mypyc (from mypy) translates the modules")
    tree = _copy_of_the_tree(tmp_path)
    with open(tree / "syncd" / "crdt" / "dots.py", "a") as f:
        f.write("\nWRONG: int = 'not an int'\n")
    done = _build_in_place(tree)
    assert done.returncode == 0, done.stderr
    assert "installing the Python source instead" in done.stderr
    assert not list(tree.rglob("*.so"))
