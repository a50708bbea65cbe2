"""`python -m refsim` runs the refsim command (refsim.cli)."""

import sys

from refsim.cli import main

sys.exit(main())
