"""``python -m conformer_vision COMMAND ...`` (torchrun launches training this way)."""

import sys

from .cli import main

sys.exit(main())
