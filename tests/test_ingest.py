"""Chunk ordering: reordering within a window, gap fill with silence, duplicates and late chunks, track interleaving."""

import numpy as np
import pytest

from service.audio.ingest import Gap, InterleavedIngest, SeqReorderBuffer, TrackIngest
from service.errors import InvalidArgument


def chunk(seq, frames=160, channels=2):
    return np.full((frames, channels), seq, dtype=np.int16)


def test_out_of_order_chunks_are_delivered_in_order():
    """Chunks swapped within the window come out in seq order, nothing filled or dropped."""
    buffer = SeqReorderBuffer(window=4, max_jump=100)
    delivered = []
    for seq in (1, 3, 2, 5, 4, 6):
        out, status = buffer.push(seq, seq)
        assert status == "accepted"
        delivered += [d for d in out if not isinstance(d, Gap)]
    assert [seq for seq, _ in delivered] == [1, 2, 3, 4, 5, 6]


def test_chunks_that_overtake_the_first_one_are_not_lost():
    """If chunk 3 arrives first, the stream waits (within the window) for 1 and 2 instead of dropping them."""
    buffer = SeqReorderBuffer(window=4, max_jump=100)
    delivered = []
    for seq in (3, 2, 1, 4):
        out, status = buffer.push(seq, seq)
        assert status == "accepted"
        delivered += [d[0] for d in out if not isinstance(d, Gap)]
    assert delivered == [1, 2, 3, 4]


def test_a_stream_may_start_at_any_seq():
    """A stream numbered from 1000 starts at its lowest seq once the window fills, with no gap."""
    buffer = SeqReorderBuffer(window=2, max_jump=100)
    outs = [buffer.push(seq, seq)[0] for seq in (1000, 1001, 1002)]
    assert outs[0] == [] and outs[1] == []
    assert outs[2] == [(1000, 1000), (1001, 1001), (1002, 1002)]


def test_a_hole_is_declared_lost_once_the_window_overflows():
    """A missing chunk is waited for while the window has room, then reported as a Gap before the next one."""
    buffer = SeqReorderBuffer(window=3, max_jump=100)
    buffer.push(1, "a")
    for seq in (3, 4, 5):
        out, _ = buffer.push(seq, seq)
        assert out == []  # still waiting for 2
    out, _ = buffer.push(6, 6)
    assert out[0] == Gap(missing=1, before_seq=3)
    assert [d[0] for d in out[1:]] == [3, 4, 5, 6]


def test_duplicates_and_late_chunks_are_dropped():
    """A delivered seq seen again is a duplicate; a seq declared lost that arrives afterwards is late."""
    buffer = SeqReorderBuffer(window=1, max_jump=100)
    buffer.push(1, 1)
    assert buffer.push(1, 1) == ([], "duplicate")
    buffer.push(3, 3)
    out, _ = buffer.push(4, 4)  # window overflow: 2 declared lost
    assert out[0] == Gap(1, 3)
    assert buffer.push(2, 2) == ([], "late")
    assert buffer.push(4, 4) == ([], "duplicate")


def test_broken_streams_are_refused():
    """seq far behind the window, or jumping further ahead than max_jump, is an InvalidArgument."""
    buffer = SeqReorderBuffer(window=2, max_jump=10)
    for seq in range(1, 51):
        buffer.push(seq, 0)
    with pytest.raises(InvalidArgument, match="far behind"):
        buffer.push(3, 0)
    with pytest.raises(InvalidArgument, match="seq jumped from 50 to 200"):
        buffer.push(200, 0)


def test_interleaved_gap_is_filled_with_silence_of_chunk_length():
    """A lost chunk becomes silence as long as its neighbour, and a gap notice says how much."""
    ingest = InterleavedIngest(channels=2, window=2, max_jump=100)
    frames = []
    notices = []
    for seq in (1, 2, 4, 5, 6):
        out, got = ingest.push(seq, chunk(seq))
        frames += out
        notices += got
    tail, more = ingest.flush()
    frames += tail
    notices += more
    audio = np.concatenate(frames)
    assert len(audio) == 6 * 160
    assert (audio[320:480] == 0).all() and (audio[480:640] == 4).all()
    assert [(n.kind, n.seq, n.chunks, n.frames) for n in notices] == [("gap", 4, 1, 160)]


def test_flush_delivers_what_waits_behind_a_hole():
    """At the end of the call, chunks waiting behind a hole are delivered with the hole filled."""
    ingest = InterleavedIngest(channels=1, window=10, max_jump=100)
    ingest.push(1, chunk(1, channels=1))
    out, _ = ingest.push(3, chunk(3, channels=1))
    assert out == []
    frames, notices = ingest.flush()
    assert sum(len(f) for f in frames) == 320 and notices[0].kind == "gap"


def test_tracks_are_interleaved_by_their_timestamps():
    """Two mono tracks become (frames, 2); a track that starts late is silent before its first chunk."""
    ingest = TrackIngest(tracks=2, window=4, max_jump=100, max_skew=1600)
    out = []
    for i in range(10):
        out += ingest.push(0, i + 1, np.full(160, 7, np.int16), start_frame=i * 160)[0]
        if i >= 5:
            out += ingest.push(1, i - 4, np.full(160, 9, np.int16), start_frame=i * 160)[0]
    out += ingest.flush()[0]
    stereo = np.concatenate(out)
    assert stereo.shape == (1600, 2)
    assert (stereo[:, 0] == 7).all()
    assert (stereo[:800, 1] == 0).all() and (stereo[800:, 1] == 9).all()


def test_a_silent_track_never_holds_the_other_back_more_than_the_skew():
    """If one track sends nothing, the other is released with at most max_skew frames held back."""
    ingest = TrackIngest(tracks=2, window=4, max_jump=1000, max_skew=320)
    released = 0
    for i in range(50):
        released += sum(len(f) for f in ingest.push(0, i + 1, np.ones(160, np.int16))[0])
    assert released >= 50 * 160 - 320
    assert ingest.queued_frames <= 2 * 320 + 2 * 160


def test_track_chunks_out_of_order_and_duplicated():
    """Per-track chunk numbers reorder a track's chunks; a duplicate is reported and dropped."""
    ingest = TrackIngest(tracks=1, window=4, max_jump=100, max_skew=1600)
    out, notices = [], []
    for n in (1, 3, 2, 2, 4):
        frames, got = ingest.push(0, n, np.full(160, n, np.int16), start_frame=(n - 1) * 160)
        out += frames
        notices += got
    mono = np.concatenate(out)[:, 0]
    assert list(mono[::160]) == [1, 2, 3, 4]
    assert [n.kind for n in notices] == ["duplicate"]


def test_the_intake_hands_out_queued_chunks_joined_up_to_a_hole_and_the_budget():
    """Five queued 20 ms chunks come out as one array with the first chunk's arrival; a budget cuts it and leaves the
    rest first in line; a stepped-over hole (a skip) is never joined to the audio around it."""
    from service.audio.intake import CallIntake
    from service.audio.ingest import Silence
    from service.config import IngestConfig
    from service.domain import AudioFormat, Encoding, Role

    intake = CallIntake(AudioFormat(Encoding.PCM16LE, 8000, (Role.CUSTOMER, Role.AGENT)), IngestConfig())
    for seq in range(1, 6):
        intake.interleaved(seq, chunk(seq).astype("<i2").tobytes(), arrival=float(seq))
    block, arrival = intake.take(10_000)
    assert block.shape == (800, 2) and arrival == 1.0 and block[::160, 0].tolist() == [1, 2, 3, 4, 5]
    assert intake.queued_samples == 0 and not intake
    for seq in range(6, 9):
        intake.interleaved(seq, chunk(seq).astype("<i2").tobytes(), arrival=float(seq))
    intake.skip(100, arrival=9.0)
    intake.interleaved(9, chunk(9).astype("<i2").tobytes(), arrival=10.0)
    block, arrival = intake.take(400)
    assert len(block) == 400 and arrival == 6.0 and intake.queued_samples == 80 + 160
    block, arrival = intake.take(10_000)
    assert len(block) == 80 and block[0, 0] == 8 and arrival == 8.0
    hole, arrival = intake.take(10_000)
    assert type(hole) is Silence and hole.frames == 800 and arrival == 9.0
    block, arrival = intake.take(10_000)
    assert len(block) == 160 and block[0, 0] == 9 and arrival == 10.0 and intake.take(10_000) is None
