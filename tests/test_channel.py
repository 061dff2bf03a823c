"""Per-channel VAD segmentation and analysis-window scheduling on the committed speech fixtures."""

import numpy as np
import pytest

from clients.wavfile import read_wav
from service.audio.channel import ChannelPipeline
from service.config import VadConfig, WindowConfig
from service.domain import Role
from tests.conftest import CALL_WAV, CUSTOMER_WAV, TIMINGS


def run_channel(samples, rate, vad=VadConfig(), windows=WindowConfig(), scored=True, chunk_ms=20):
    pipeline = ChannelPipeline(Role.CUSTOMER, rate, vad, windows, scored=scored)
    step = rate * chunk_ms // 1000
    out = []
    for i in range(0, len(samples), step):
        out.extend(pipeline.push(samples[i : i + step], arrival=float(i)))
    out.extend(pipeline.flush(arrival=-1.0))
    return pipeline, out


@pytest.fixture(scope="module")
def customer():
    wav = read_wav(str(CUSTOMER_WAV))
    return wav.samples[:, 0], wav.sample_rate


@pytest.fixture(scope="module")
def call():
    return read_wav(str(CALL_WAV))


FULL = WindowConfig(scoring="full")


def test_windows_are_cut_every_hop_while_speaking(customer):
    """During a segment a window is cut every hop of speech, each at most window_ms long."""
    samples, rate = customer
    pipeline, windows = run_channel(samples, rate, windows=FULL)
    assert pipeline.segments >= 1 and windows
    for w in windows:
        assert 0 < w.end_ms - w.start_ms <= 3000
        assert len(w.samples) == w.end_sample - w.start_sample == w.end_sample - w.encode_from_sample
    by_segment = {}
    for w in windows:
        by_segment.setdefault(w.segment_index, []).append(w)
    for seg in by_segment.values():
        hops = [b.end_ms - a.end_ms for a, b in zip(seg, seg[1:]) if not b.final]
        assert all(h >= 500 for h in hops)
        assert all(h <= 600 for h in hops), hops  # no speech hop is skipped
        assert seg[-1].final


def test_incremental_scoring_encodes_new_speech_plus_context(call):
    """Incremental windows send only the new speech and context_ms before it: about (context+hop)/hop of the speech."""
    samples = np.ascontiguousarray(call.samples[:, 0])
    config = WindowConfig(scoring="incremental", context_ms=1000, hop_ms=500)
    pipeline, windows = run_channel(samples, call.sample_rate, windows=config)
    full_pipeline, full = run_channel(samples, call.sample_rate, windows=FULL)
    assert [(w.start_sample, w.end_sample) for w in windows] == [(w.start_sample, w.end_sample) for w in full]
    seg_start = {}
    for w in windows:
        seg_start.setdefault(w.segment_index, w.start_sample)
        assert w.encode_from_sample == max(seg_start[w.segment_index], w.new_from_sample - 8000)
        assert len(w.samples) == w.end_sample - w.encode_from_sample
    encoded = sum(len(w.samples) for w in windows) / call.sample_rate
    full_encoded = sum(len(w.samples) for w in full) / call.sample_rate
    speech = pipeline.speech_ms / 1000
    assert encoded < 3.2 * speech and full_encoded > 4.5 * speech


def test_new_speech_of_windows_adds_up_to_segment_speech(customer):
    """The speech each window adds covers the segment once, without overlap (what the rules count)."""
    samples, rate = customer
    pipeline, windows = run_channel(samples, rate)
    covered = sum(w.new_speech_ms for w in windows)
    assert 0.8 * pipeline.speech_ms <= covered <= pipeline.speech_ms
    for a, b in zip(windows, windows[1:]):
        if a.segment_index == b.segment_index:
            assert b.new_from_sample == a.end_sample


def test_long_speech_is_scored_while_it_happens(customer):
    """A window is available well before the end of a multi-second utterance, not only after it."""
    samples, rate = customer
    _, windows = run_channel(samples, rate)
    speech_end_ms = max(w.end_ms for w in windows)
    assert min(w.end_ms for w in windows) <= speech_end_ms - 2000


def test_silence_produces_no_segments():
    """Digital silence and low noise open no segment and cut no window."""
    rng = np.random.default_rng(0)
    quiet = (rng.normal(0, 3, 16000 * 5)).astype(np.int16)
    pipeline, windows = run_channel(quiet, 16000)
    assert pipeline.segments == 0 and windows == []


def test_speech_is_found_where_the_fixture_put_it(call):
    """On the stereo call, each channel's first segment starts where the fixture script placed that voice."""
    rate = call.sample_rate
    for index, role in enumerate(("customer", "agent")):
        pipeline = ChannelPipeline(Role.CUSTOMER, rate, VadConfig(), WindowConfig())
        first_window = None
        for i in range(0, len(call.samples), 160):
            got = pipeline.push(np.ascontiguousarray(call.samples[i : i + 160, index]), 0.0)
            if got and first_window is None:
                first_window = got[0]
        expected_start = TIMINGS["call_stereo_8k.wav"][f"{role}_speech"][0][0]
        assert first_window is not None
        assert abs(first_window.start_ms / 1000 - expected_start) < 0.2


def test_segments_are_cut_at_max_length(customer):
    """No segment is longer than max_segment_ms; speech that goes on continues in the next segment."""
    samples, rate = customer
    vad = VadConfig(max_segment_ms=1000)
    pipeline, windows = run_channel(samples, rate, vad=vad, windows=WindowConfig(window_ms=3000, hop_ms=500))
    assert pipeline.segments >= 3
    for w in windows:
        assert w.end_ms - w.start_ms <= 1000


def test_trailing_silence_decides_where_segments_close(call):
    """Sentence pauses split the customer's turn at 100 ms trailing silence but not at 300 ms."""
    samples = np.ascontiguousarray(call.samples[:, 0])
    short, _ = run_channel(samples, call.sample_rate, vad=VadConfig(trailing_silence_ms=100))
    default, _ = run_channel(samples, call.sample_rate, vad=VadConfig(trailing_silence_ms=300))
    assert short.segments >= 2
    assert default.segments == len(TIMINGS["call_stereo_8k.wav"]["customer_speech"])


def test_unscored_channel_cuts_windows_without_audio(customer):
    """A channel whose role is not scored cuts windows on the same schedule (for prosody rules) but carries no audio for the model."""
    samples, rate = customer
    scored_pipeline, scored = run_channel(samples, rate)
    pipeline, windows = run_channel(samples, rate, scored=False)
    assert pipeline.segments >= 1 and pipeline.speech_ms > 1000
    assert [(w.start_sample, w.end_sample) for w in windows] == [(w.start_sample, w.end_sample) for w in scored]
    assert all(not w.scored and len(w.samples) == 0 for w in windows) and all(w.scored and len(w.samples) for w in scored)


def test_memory_is_bounded_for_long_audio(customer):
    """Ten minutes of speech leave the channel's buffers at the same size as after ten seconds."""
    samples, rate = customer
    pipeline = ChannelPipeline(Role.CUSTOMER, rate, VadConfig(), WindowConfig())
    looped = np.tile(samples, 3)
    pipeline.push(looped, 0.0)
    early = pipeline.buffered_samples
    for _ in range(60):
        pipeline.push(looped, 0.0)
    assert pipeline.buffered_samples <= early + rate * 20 // 1000  # a partial frame may wait
    assert pipeline.position >= 10 * 60 * rate


def generated_speech(rate: int, seconds: float, seed: int) -> np.ndarray:
    """Voiced bursts (a glottal-like pulse train with syllable envelopes) of random lengths between random
    silences, some short enough to be bridged, some long enough to close a segment."""
    rng = np.random.default_rng(seed)
    out = []
    total = int(seconds * rate)
    while sum(len(x) for x in out) < total:
        burst = int(rng.uniform(0.1, 4.0) * rate)
        t = np.arange(burst) / rate
        f0 = rng.uniform(90, 250)
        source = np.sign(np.sin(2 * np.pi * f0 * t)) * np.exp(-((t * f0) % 1.0) * 6)
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(3, 6) * t) ** 2
        out.append((source * envelope * rng.uniform(2000, 12000)).astype(np.int16))
        out.append((rng.normal(0, 20, int(rng.choice([0.1, 0.25, 0.5, 1.5]) * rate))).astype(np.int16))
    return np.concatenate(out)[:total]


def _window_fields(w):
    return (w.role, w.segment_index, w.sample_rate, w.start_sample, w.end_sample, w.encode_from_sample, w.new_from_sample,
            w.final, w.cut_sample, w.scored, w.samples.dtype, w.samples.tobytes())


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("windows", [WindowConfig(), FULL])
def test_pushing_20_ms_at_a_time_or_one_block_gives_the_same_segments_and_windows(rate, windows):
    """The same generated audio pushed 20 ms at a time, in 7 ms pieces or in one block gives identical windows
    (spans, cut points, audio), VAD decisions, segments and speech time, with segments also cut at their maximum length
    and a skipped stretch in the middle."""
    samples = generated_speech(rate, 40, seed=rate)
    halves = (samples[: len(samples) // 2], samples[len(samples) // 2:])
    vad = VadConfig(max_segment_ms=2000)
    results = []
    for chunk in (rate * 20 // 1000, rate * 7 // 1000, len(samples)):
        pipeline = ChannelPipeline(Role.CUSTOMER, rate, vad, windows, keep_frames=True)
        cut, flags = [], []
        for part, half in enumerate(halves):
            if part:
                cut.extend(pipeline.skip(rate * 3 // 2, arrival=0.0))
            for i in range(0, len(half), chunk):
                cut.extend(pipeline.push(half[i:i + chunk], arrival=0.0))
                block, voiced = pipeline.take_frames()
                assert len(block) == len(voiced) * pipeline._frame
                flags.append(voiced)
        cut.extend(pipeline.flush(arrival=0.0))
        results.append(([_window_fields(w) for w in cut], b"".join(flags), pipeline.segments, pipeline.speech_samples,
                         pipeline.position))
    assert results[0] == results[1] == results[2]
    windows_cut, flags, segments, _, position = results[0]
    assert segments >= 8 and len(windows_cut) > segments and position >= len(samples) + rate * 3 // 2 - 2 * rate // 50
    assert sum(flags) > len(flags) // 3
    assert any(w[4] - w[3] >= 19 * rate // 10 for w in windows_cut)  # segments ran into max_segment_ms
