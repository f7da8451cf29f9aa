"""The benchmark scripts still run and report what bench/README.md's tables name.

Not a performance test: every script runs at a tiny size, and only the shape of its ``--json``
line is checked (one JSON object on the last line of stdout, holding every key of its README
table). Figures are never asserted here; the README quotes real runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

TINY_RUNS = {
    "map_ops": ["--fields", "500", "--history", "50", "--repeat", "1"],
    "sync": ["--docs", "200", "--edits", "100", "--touched", "50"],
    "api": ["--seconds", "0.1"],
    "store": ["--rounds", "1", "--writes", "30", "--docs", "200"],
    "text_trace": ["--repeat", "1"],
}


def readme_keys(section: str) -> set[str]:
    """The keys of the table under ``## section`` in bench/README.md (first column: the
    backquoted names before any parenthesis, or the first word where nothing is quoted)."""
    text = (BENCH / "README.md").read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"bench/README.md has no section {section!r}"
    keys: set[str] = set()
    for line in match.group(1).splitlines():
        if not line.startswith("| ") or line.startswith("| ---"):
            continue
        cell = line.split("|")[1].split(" (")[0].strip()
        if cell == "key":
            continue
        quoted = re.findall(r"`([a-z0-9_]+)`", cell)
        keys.update(quoted or [cell.split()[0]])
    assert keys, f"no table rows under {section!r}"
    return keys


def test_every_script_has_a_tiny_run_and_a_readme_section() -> None:
    scripts = {p.stem for p in BENCH.glob("*.py")}
    assert scripts == set(TINY_RUNS)
    for name in scripts:
        readme_keys(name)


@pytest.mark.parametrize("name", sorted(TINY_RUNS))
def test_a_tiny_run_reports_every_key_of_its_readme_table(name: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *TINY_RUNS[name], "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(report, dict)
    missing = readme_keys(name) - set(report)
    assert not missing, f"bench/{name}.py --json lacks {sorted(missing)} (named in the README)"


def test_sync_refuses_more_touched_documents_than_it_has() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "sync.py"), "--docs", "10", "--touched", "20"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--touched must be from 1 to --docs (10)" in proc.stderr
    assert "Traceback" not in proc.stderr
