"""The ``syncd`` console script: :func:`syncd.cli.main`, with Ctrl-C during start-up handled.

The CLI's own handlers turn SIGINT into a one-line message and exit status 130, but they exist
only once :mod:`syncd.cli` is imported; an interrupt during that import (a user pressing
Ctrl-C right after starting ``syncd watch``) would otherwise print a traceback.
"""

import sys


def main() -> int:
    """Import and run the CLI; an interrupt before it is ready exits 130 quietly."""
    try:
        from syncd.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("syncd: interrupted\n")
        return 130
    return cli_main()
