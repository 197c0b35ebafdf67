"""`python -m llmbatch.simulate ...` is `llmbatch simulate ...`."""

import sys

from ..cli import main

sys.exit(main(["simulate", *sys.argv[1:]]))
