"""Offline start: MetaDrive never downloads its 3D assets from a ppo_core process.

MetaDrive 0.4.3 calls ``BaseEngine.try_pull_asset()`` when its engine starts and
downloads ``assets.zip`` when the assets are missing or outdated; physics-only stepping
and the top-down renderer use none of them. :func:`ensure_offline_assets` (called by
every env of this package before it builds MetaDrive's) turns that download off in the
current process when the real assets are absent. The MetaDrive imports are inside the
functions: importing this module imports no MetaDrive.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path
from typing import Optional, Tuple

__all__ = ["ALLOW_DOWNLOAD_ENV", "asset_status", "ensure_offline_assets"]

logger = logging.getLogger("ppo_core.envs.metadrive")

#: Set this environment variable to ``1`` to let MetaDrive download its 3D assets as it
#: normally would (only useful for 3D rendering; never needed for training).
ALLOW_DOWNLOAD_ENV = "PPO_CORE_METADRIVE_ALLOW_ASSET_DOWNLOAD"

_GRASS_TEXTURE = ("textures", "grass1", "GroundGrassGreen002_COL_1K.jpg")
_offline_state: Optional[str] = None  # result of the first ensure_offline_assets() call


def asset_status() -> Tuple[str, Path]:
    """Report the state of MetaDrive's 3D assets, mirroring MetaDrive 0.4.3's own check.

    Returns:
        ``(status, asset_dir)`` where status is ``"present"`` (``version.txt`` matches
        the installed MetaDrive and the grass texture exists: MetaDrive would not download),
        ``"missing"`` (no asset folder or no ``version.txt``) or ``"outdated"`` (folder
        present but the version differs or the grass texture is missing: MetaDrive would
        re-download).
    """
    from metadrive.engine.asset_loader import AssetLoader
    from metadrive.version import VERSION

    asset_dir = Path(str(AssetLoader.asset_path))
    version_file = asset_dir / "version.txt"
    if not version_file.is_file():
        return "missing", asset_dir
    lines = version_file.read_text().splitlines()
    version = lines[0].replace(" ", "") if lines else ""
    if version != VERSION or not asset_dir.joinpath(*_GRASS_TEXTURE).is_file():
        return "outdated", asset_dir
    return "present", asset_dir


def _skip_asset_pull() -> None:
    """Replacement for ``BaseEngine.try_pull_asset``: never touches the network."""
    logger.debug("MetaDrive engine start: asset download skipped (ppo_core offline mode)")


def ensure_offline_assets(allow_download: Optional[bool] = None) -> str:
    """Make sure starting a MetaDrive engine in this process never downloads anything.

    MetaDrive 0.4.3's ``BaseEngine.try_pull_asset`` (run at every engine start) downloads
    a zip when the 3D assets are missing or outdated. Physics-only stepping and the
    top-down renderer need none of them. This function:

    * leaves MetaDrive untouched if the real assets are present (MetaDrive's check then
      only logs the version and never downloads);
    * otherwise replaces ``BaseEngine.try_pull_asset`` in this process by a no-op, so no
      download is attempted (nothing on disk is changed; a user can still run
      ``python -m metadrive.pull_asset`` at any time to get the real assets);
    * does nothing if downloads are explicitly allowed (argument, or the environment
      variable :data:`ALLOW_DOWNLOAD_ENV` set to ``1``).

    It logs one INFO line per process saying what it did; later calls are cheap.

    Args:
        allow_download: ``True`` keeps MetaDrive's download behaviour. ``None`` reads
            :data:`ALLOW_DOWNLOAD_ENV`.

    Returns:
        ``"present"`` (real assets, untouched), ``"patched"`` (download disabled) or
        ``"download-allowed"``.
    """
    global _offline_state
    if _offline_state is not None:
        return _offline_state
    if allow_download is None:
        allow_download = os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    from metadrive.engine.base_engine import BaseEngine

    status, asset_dir = asset_status()
    # One INFO line per run: worker processes (vector envs, evaluators) log at DEBUG.
    info = logging.INFO if multiprocessing.parent_process() is None else logging.DEBUG
    if status == "present":
        logger.log(info, "MetaDrive assets found at %s; using them, no download check changed", asset_dir)
        _offline_state = "present"
    elif allow_download:
        logger.warning(
            "MetaDrive assets %s at %s and %s=1: MetaDrive may download them at engine start",
            status, asset_dir, ALLOW_DOWNLOAD_ENV,
        )
        _offline_state = "download-allowed"
    else:
        BaseEngine.try_pull_asset = staticmethod(_skip_asset_pull)
        logger.log(
            info,
            "MetaDrive 3D assets %s at %s: disabled MetaDrive's asset download "
            "(BaseEngine.try_pull_asset) in this process; physics and the top-down renderer "
            "need no assets (3D rendering would: run `python -m metadrive.pull_asset`)",
            status, asset_dir,
        )
        _offline_state = "patched"
    return _offline_state
