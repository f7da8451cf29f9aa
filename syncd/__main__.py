"""``python -m syncd`` is the ``syncd`` command."""

import sys

from syncd.console import main

sys.exit(main())
