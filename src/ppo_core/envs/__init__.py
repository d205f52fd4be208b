"""Environment layers for ppo_core.

This package is import-light on purpose: importing ``ppo_core.envs`` pulls in
neither MetaDrive nor torch. :mod:`ppo_core.envs.registry` says which env ids belong to
an env family and what each family offers; the MetaDrive family lives in
:mod:`ppo_core.envs.metadrive` and imports MetaDrive only when an environment is
actually built (inside the process that steps it).

Typical use::

    from ppo_core.envs.metadrive import MetaDriveConfig, make_vector_env, evaluate_policy
"""

from __future__ import annotations

__all__ = ["metadrive_available"]


def metadrive_available() -> bool:
    """Return True if the optional ``metadrive-simulator`` package is importable.

    Only looks the package up (``importlib.util.find_spec``); does not import it.
    """
    import importlib.util

    return importlib.util.find_spec("metadrive") is not None
