"""Same as ``ppo-core bench`` (kept so that older instructions still work).

    python benchmarks/bench_kernels.py [--quick] [--e2e] [--json PATH]

The benchmark lives in ``ppo_core.bench``; see benchmarks/README.md for what it measures
and the latest table.
"""

import sys

from ppo_core.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
