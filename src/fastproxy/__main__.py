"""``python -m fastproxy``: the same as the ``fastproxy`` command."""
import sys

from .cli import main

sys.exit(main())
