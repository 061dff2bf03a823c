"""Fixed-capacity sample ring addressed by absolute sample index (bounded memory for any call length)."""

from __future__ import annotations

import numpy as np


class SampleRing:
    """Keeps the most recent `capacity` int16 samples of one channel."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self._buf = np.zeros(capacity, dtype=np.int16)
        self._end = 0  # absolute index one past the newest sample

    @property
    def capacity(self) -> int:
        return len(self._buf)

    @property
    def end(self) -> int:
        """Absolute index one past the newest sample."""
        return self._end

    @property
    def start(self) -> int:
        """Absolute index of the oldest sample still held."""
        return max(0, self._end - len(self._buf))

    def append(self, samples: np.ndarray) -> None:
        n = len(samples)
        cap = len(self._buf)
        if n >= cap:
            self._buf[:] = samples[-cap:]
            # keep the invariant that sample i lives at i % cap
            self._buf = np.roll(self._buf, (self._end + n) % cap)
        else:
            pos = self._end % cap
            first = min(n, cap - pos)
            self._buf[pos : pos + first] = samples[:first]
            self._buf[: n - first] = samples[first:]
        self._end += n

    def skip(self, n: int) -> None:
        """Advance the clock by n samples of silence without keeping more than the capacity of zeros."""
        self.append(np.zeros(min(n, len(self._buf)), dtype=np.int16))
        self._end += max(0, n - len(self._buf))

    def slice(self, start: int, end: int) -> np.ndarray:
        """Copy of samples [start, end); raises ValueError if they are no longer (or not yet) held."""
        if start < self.start or end > self._end or start > end:
            raise ValueError(f"samples [{start}, {end}) are outside the ring [{self.start}, {self._end})")
        cap = len(self._buf)
        a, b = start % cap, end % cap
        if end - start == 0:
            return np.zeros(0, dtype=np.int16)
        if a < b:
            return self._buf[a:b].copy()
        return np.concatenate([self._buf[a:], self._buf[:b]])
