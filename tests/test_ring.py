"""The bounded sample ring used for per-channel audio."""

import numpy as np
import pytest

from service.audio.ring import SampleRing


def test_slices_survive_wraparound():
    """Samples appended across the wrap point are read back in order by absolute index."""
    ring = SampleRing(10)
    data = np.arange(25, dtype=np.int16)
    for i in range(0, 25, 3):
        ring.append(data[i : i + 3])
    assert ring.end == 25 and ring.start == 15
    assert np.array_equal(ring.slice(15, 25), data[15:25])
    assert np.array_equal(ring.slice(18, 22), data[18:22])


def test_append_larger_than_capacity_keeps_newest():
    """One append longer than the ring keeps only its newest samples at the right indices."""
    ring = SampleRing(8)
    ring.append(np.arange(3, dtype=np.int16))
    ring.append(np.arange(100, 120, dtype=np.int16))
    assert ring.end == 23
    assert np.array_equal(ring.slice(15, 23), np.arange(112, 120))


def test_evicted_samples_cannot_be_read():
    """Reading samples that were overwritten raises instead of returning wrong audio."""
    ring = SampleRing(4)
    ring.append(np.arange(10, dtype=np.int16))
    with pytest.raises(ValueError, match="outside the ring"):
        ring.slice(2, 6)
