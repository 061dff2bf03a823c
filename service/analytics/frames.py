"""One speaker's 50 Hz emotion frame-logit track, for scoring windows from incrementally encoded audio.

Frames are indexed by their absolute position (20 ms slots from the call start). Each encoded chunk
contributes the frames after the newest one already held (the chunk's left context only gives those
frames their context); a window's scores are softmax(mean logits of the frames inside it).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from service.inference.base import softmax_mean


class FrameTrack:
    """Bounded track of (absolute frame index, logits) for the current speech segment."""

    def __init__(self, max_frames: int) -> None:
        self._frames: deque[tuple[int, np.ndarray]] = deque(maxlen=max_frames)
        self._segment = -1

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, segment: int, first_frame: int, logits: np.ndarray) -> int:
        """Store the frames of one encoded chunk whose first frame is at absolute index `first_frame`; returns how many were new."""
        if segment != self._segment:
            self._frames.clear()
            self._segment = segment
        newest = self._frames[-1][0] if self._frames else -1
        added = 0
        for offset, row in enumerate(logits):
            index = first_frame + offset
            if index > newest:
                self._frames.append((index, row))
                added += 1
        return added

    def scores(self, start_frame: int, end_frame: int) -> tuple[np.ndarray | None, int]:
        """softmax(mean logits) of the held frames in [start_frame, end_frame), and how many there were."""
        rows = [row for index, row in self._frames if start_frame <= index < end_frame]
        if not rows:
            return None, 0
        return softmax_mean(np.stack(rows)), len(rows)
