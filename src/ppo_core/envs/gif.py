"""Frames to an animated GIF (Pillow), shared by every env's ``ppo-core eval --gif``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Union

import numpy as np

if TYPE_CHECKING:  # Pillow is imported when a frame is added (the 'train' extra)
    from PIL import Image

__all__ = ["GifFrames"]


class GifFrames:
    """Collects RGB frames, keeping every ``frame_skip``-th one and always the last; ``save(path, fps)``."""

    def __init__(self, frame_skip: int = 1) -> None:
        self.frame_skip = max(1, int(frame_skip))
        self.frames: List["Image.Image"] = []
        self._seen = 0
        self._pending: Union[np.ndarray, None] = None

    def add(self, frame: np.ndarray) -> None:
        if self._seen % self.frame_skip == 0:
            self.frames.append(self._image(frame))
            self._pending = None
        else:
            self._pending = frame
        self._seen += 1

    def extend(self, frames: Iterable[np.ndarray]) -> None:
        for frame in frames:
            self.add(frame)

    @staticmethod
    def _image(frame: np.ndarray) -> "Image.Image":
        from PIL import Image

        return Image.fromarray(np.asarray(frame, np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)

    def save(self, path: Union[str, os.PathLike], fps: int = 15) -> int:
        """Write the GIF (parent folders created); returns the number of frames. Raises
        ``RuntimeError`` when there are none."""
        if self._pending is not None:
            self.frames.append(self._image(self._pending))
            self._pending = None
        if not self.frames:
            raise RuntimeError("the renderer produced no frames")
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        first, *rest = self.frames
        first.save(out, save_all=True, append_images=rest, duration=int(1000 / fps), loop=0, optimize=False)
        return len(self.frames)
