"""``python -m host``: the ``polyspell`` command, for when its script is not on PATH."""

import sys

from host.cli import main

sys.exit(main())
