"""Entry point for ``python -m bench``.

The guard matters: the load generator runs in ``spawn``-ed processes, which
re-import this module under another name and must not start a second run.
"""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
