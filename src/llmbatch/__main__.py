"""`python -m llmbatch ...` is `llmbatch ...`."""

import sys

from .cli import main

sys.exit(main())
