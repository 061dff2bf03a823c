"""Which voiced frames speak: near-silent frames and a channel far below the other in a frame both voice are dropped."""

import numpy as np
import pytest

from service.analytics.crosstalk import SPEECH_FLOOR_DBFS, speaking_frames

FRAME = 160


def tone_frames(levels_dbfs: list[float]) -> np.ndarray:
    """int16 frames of a 200 Hz tone, one frame per level (a sine of amplitude A reads 20*log10(A/sqrt2/32768) dBFS)."""
    t = np.arange(FRAME) / 8000
    rows = [np.sin(2 * np.pi * 200 * t) * 32768 * np.sqrt(2) * 10 ** (db / 20) for db in levels_dbfs]
    return np.concatenate(rows).astype(np.int16)


def test_a_channel_at_least_the_margin_below_the_other_is_crosstalk():
    """Where both channels speak, the one 25 dB down is crosstalk, one 15 dB down is kept, and a lone quiet one is kept."""
    a = tone_frames([-20, -20, -50, -20])
    b = tone_frames([-45, -35, -20, -60])
    voiced = np.array([[True, True], [True, True], [True, True], [False, True]])
    speaking, crosstalk = speaking_frames([a, b], voiced, FRAME, margin_db=20)
    assert speaking.tolist() == [[True, False], [True, True], [False, True], [False, True]]
    assert crosstalk.tolist() == [[False, True], [False, False], [True, False], [False, False]]


def test_a_frame_exactly_the_margin_below_counts_as_crosstalk():
    """The margin is inclusive: 20.0 dB below with a 20 dB margin is dropped, 19 dB below is kept."""
    a = tone_frames([-10, -10])
    b = tone_frames([-30, -29])
    speaking, _ = speaking_frames([a, b], np.ones((2, 2), bool), FRAME, margin_db=20)
    assert speaking[:, 1].tolist() == [False, True] and speaking[:, 0].all()


def test_near_silent_voiced_frames_do_not_speak_on_any_call():
    """Digital silence and frames at or below the speech floor never speak, on a mono call too, and are not crosstalk."""
    mono = np.concatenate([np.zeros(FRAME, np.int16), tone_frames([SPEECH_FLOOR_DBFS - 3, -30])])
    speaking, crosstalk = speaking_frames([mono], np.ones((3, 1), bool), FRAME, margin_db=20)
    assert speaking[:, 0].tolist() == [False, False, True] and not crosstalk.any()
    silent = np.zeros(2 * FRAME, np.int16)
    speaking, crosstalk = speaking_frames([silent, silent], np.ones((2, 2), bool), FRAME, margin_db=20)
    assert not speaking.any() and not crosstalk.any()


def test_margin_zero_or_one_channel_keeps_every_audible_frame():
    """With a zero margin, or on a mono call, every voiced frame above the floor speaks and none is crosstalk."""
    a = tone_frames([-10, -60])
    b = tone_frames([-60, -10])
    voiced = np.ones((2, 2), bool)
    speaking, crosstalk = speaking_frames([a, b], voiced, FRAME, margin_db=0)
    assert speaking.all() and not crosstalk.any()
    speaking, _ = speaking_frames([a], voiced[:, :1], FRAME, margin_db=20)
    assert speaking.all()


def test_a_mask_that_does_not_match_the_channels_is_refused():
    """A VAD mask with another number of channels than blocks raises ValueError naming the expected shape."""
    with pytest.raises(ValueError, match=r"shape \(frames, 2\)"):
        speaking_frames([tone_frames([-10]), tone_frames([-10])], np.ones((1, 3), bool), FRAME, margin_db=20)


@pytest.mark.parametrize("channels, margin", [(2, 20.0), (2, 0.0), (1, 20.0), (3, 15.0)])
def test_frame_by_frame_gives_the_same_answer_as_a_block(channels, margin):
    """Deciding 20 ms at a time (the usual chunk) gives exactly what deciding the same frames in one block gives."""
    rng = np.random.default_rng(channels)
    frames = 200
    levels = rng.uniform(-100, -5, size=(frames, channels))
    blocks = [tone_frames(levels[:, c].tolist()) for c in range(channels)]
    blocks = [np.where(rng.random(len(b)) < 0.02, 0, b).astype(np.int16) for b in blocks]
    voiced = rng.random((frames, channels)) < 0.7
    speaking, crosstalk = speaking_frames(blocks, voiced, FRAME, margin)
    one_by_one = [speaking_frames([b[i * FRAME:(i + 1) * FRAME] for b in blocks], voiced[i:i + 1], FRAME, margin)
                  for i in range(frames)]
    assert np.array_equal(np.concatenate([s for s, _ in one_by_one]), speaking)
    assert np.array_equal(np.concatenate([c for _, c in one_by_one]), crosstalk)
    assert crosstalk.any() == (margin > 0 and channels > 1)
