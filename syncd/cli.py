"""The ``syncd`` command line."""

from __future__ import annotations

import argparse
import sys

from syncd import __version__


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = argparse.ArgumentParser(prog="syncd", description="Peer-to-peer sync daemon.")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    parser.parse_args(argv)
    parser.print_help(sys.stdout)
    return 0
