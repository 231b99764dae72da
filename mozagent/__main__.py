"""``python -m mozagent``: the same as the ``mozagent`` console script."""

import sys

from mozagent.cli import main

sys.exit(main())
