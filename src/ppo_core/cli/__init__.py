"""The ``ppo-core`` command: ``train``, ``eval``, ``verify``, ``bench``, ``compare``, ``lrsweep`` and ``gradvar``.

One module per job: :mod:`.main` (the parser, train, eval, verify, bench),
:mod:`.experiments` (compare, lrsweep, gradvar), :mod:`.common` (what they share).
Nothing outside this package imports it. Bad input gives one ``ppo-core: error: ...``
line on stderr and a non-zero exit, never a traceback.
"""

from .common import CLIError
from .main import build_parser, main

__all__ = ["main", "build_parser", "CLIError"]
