"""``python -m ppo_core``: the ``ppo-core`` command line."""

import sys

from ppo_core.cli import main

sys.exit(main())
