"""Prosody analytics against generated signals with a known answer and the committed espeak-ng speech fixtures."""

import math
import wave
from pathlib import Path

import numpy as np
import pytest
import webrtcvad

from service.analytics.prosody import (
    SILENCE_DBFS,
    ProsodyFigures,
    ProsodyTrack,
    SyllableNuclei,
    frame_levels_db,
    loudness_dbfs,
    pitch_jumps,
    yin,
    yin_f0,
    yin_min_samples,
)

SAMPLES = Path(__file__).resolve().parent.parent / "clients" / "samples"


def sine(freq, rate, seconds, amplitude=1.0, phase=0.3):
    t = np.arange(int(round(seconds * rate))) / rate
    return amplitude * np.sin(2 * np.pi * freq * t + phase)


def sawtooth(freq, rate, seconds):
    """Band-limited sawtooth: every harmonic below Nyquist at amplitude 1/k."""
    t = np.arange(int(round(seconds * rate))) / rate
    k = np.arange(1, int(rate / 2 / freq) + 1)
    return (np.sin(2 * np.pi * freq * t[:, None] * k[None, :] + k) / k).sum(axis=1)


def glottal_pulses(freq, rate, seconds):
    """Derivative of a Rosenberg glottal pulse train (open phase 40%, closing 16%)."""
    t = np.arange(int(round(seconds * rate))) / rate
    phase = (t * freq) % 1.0
    flow = np.where(phase < 0.4, 0.5 * (1 - np.cos(np.pi * phase / 0.4)),
                    np.where(phase < 0.56, np.cos(np.pi * (phase - 0.4) / 0.32), 0.0))
    return np.diff(flow, prepend=flow[0])


def frames_of(signal, length, count):
    return np.asarray(signal[: length * count]).reshape(count, length)


def to_int16(signal, peak=12000):
    return np.round(signal / np.max(np.abs(signal)) * peak).astype(np.int16)


def amplitude_for_dbfs(level):
    return 32768.0 * math.sqrt(2) * 10 ** (level / 20)


def syllable_train(rate_per_s, sample_rate, seconds, source, syllable_ms=150):
    """`source` gated by a Hann envelope of `syllable_ms` at the start of every 1/rate s (silent in between)."""
    n = int(seconds * sample_rate)
    envelope = np.zeros(n)
    period, width = int(sample_rate / rate_per_s), int(sample_rate * syllable_ms / 1000)
    for start in range(0, n - width + 1, period):
        envelope[start : start + width] = np.hanning(width)
    return envelope * source[:n]


def read_channel(path, channel=0):
    with wave.open(str(path)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, channels)
    return np.ascontiguousarray(data[:, channel]), rate


def vad_flags(samples, rate, frame_ms=20):
    vad = webrtcvad.Vad(2)
    step = rate * frame_ms // 1000
    n = len(samples) // step
    flags = np.array([vad.is_speech(samples[i * step : (i + 1) * step].tobytes(), rate) for i in range(n)])
    return samples[: n * step], flags


# -- YIN --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("f0", [80.0, 120.0, 200.0, 300.0])
def test_yin_finds_the_frequency_of_a_pure_tone(rate, f0):
    """yin_f0 estimates a pure tone's frequency within 1% in every 40 ms frame."""
    length = rate * 40 // 1000
    frames = frames_of(sine(f0, rate, 1.0, 10000), length, 20)
    estimate = yin_f0(frames, rate)
    assert estimate.shape == (20,)
    assert not np.isnan(estimate).any()
    assert np.max(np.abs(estimate / f0 - 1)) < 0.01


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("f0", [80.0, 120.0, 150.0, 200.0, 300.0])
@pytest.mark.parametrize("source", [sawtooth, glottal_pulses])
def test_yin_finds_the_f0_of_harmonic_rich_tones(rate, f0, source):
    """yin_f0 estimates the F0 of a sawtooth or glottal-pulse train within 1% (no octave errors)."""
    length = rate * 40 // 1000
    frames = frames_of(to_int16(source(f0, rate, 1.0)), length, 20)
    estimate = yin_f0(frames, rate)
    assert not np.isnan(estimate).any()
    assert np.max(np.abs(estimate / f0 - 1)) < 0.01


@pytest.mark.parametrize("rate", [8000, 16000])
def test_yin_gives_nan_on_white_noise_and_silence(rate):
    """yin_f0 finds no period in white noise or digital silence."""
    length = rate * 40 // 1000
    noise = np.random.default_rng(7).normal(0, 3000, (200, length))
    assert np.isnan(yin_f0(noise, rate)).all()
    assert np.isnan(yin_f0(np.zeros((5, length), np.int16), rate)).all()


def test_yin_rejects_frames_shorter_than_its_minimum():
    """yin_f0 raises for frames shorter than two periods of fmin plus the lags and accepts the minimum."""
    rate = 8000
    minimum = yin_min_samples(rate)
    assert minimum == 2 * math.ceil(rate / 60.0) + 2
    with pytest.raises(ValueError):
        yin_f0(np.zeros((1, minimum - 1)), rate)
    estimate = yin_f0(frames_of(sine(150.0, rate, 0.1, 8000), minimum, 1), rate)
    assert abs(estimate[0] / 150.0 - 1) < 0.01


# -- levels -----------------------------------------------------------------------------------------


def test_frame_levels_follow_known_steps():
    """A sine of amplitude A reads 20*log10(A/sqrt2/32768) dBFS, silence the floor, a full-scale square 0 dBFS."""
    rate, length = 8000, 160
    amplitudes = [100.0, 1000.0, 10000.0, 30000.0]
    rows = [np.round(sine(200.0, rate, 0.02, a)).astype(np.int16) for a in amplitudes]
    rows.append(np.zeros(length, np.int16))
    rows.append(np.where(np.arange(length) % 40 < 20, 32767, -32768).astype(np.int16))
    levels = frame_levels_db(np.stack(rows))
    assert levels.dtype == np.float64
    expected = [20 * math.log10(a / math.sqrt(2) / 32768) for a in amplitudes]
    assert np.allclose(levels[:4], expected, atol=0.02)
    assert levels[4] == SILENCE_DBFS
    assert abs(levels[5]) < 0.01
    assert all(abs(levels[i] - loudness_dbfs(rows[i])) < 1e-9 for i in range(len(rows)))


def test_baseline_warms_up_and_loudness_over_baseline_measures_the_step():
    """A speaker at -30 dBFS for 12 s then at -18 dBFS reads about +12 dB over a baseline that is None before the warm-up."""
    rate = 8000
    track = ProsodyTrack(rate)
    quiet = np.round(sine(150.0, rate, 12.0, amplitude_for_dbfs(-30.0))).astype(np.int16)
    loud = np.round(sine(150.0, rate, 2.0, amplitude_for_dbfs(-18.0))).astype(np.int16)
    track.push(quiet[: 9 * rate], np.ones(450, bool))
    early = track.figures(8 * rate, 9 * rate, 8 * rate)
    assert track.baseline_dbfs is None and early.loudness_over_baseline_db is None
    assert abs(early.loudness_dbfs + 30.0) < 0.1
    track.push(quiet[9 * rate :], np.ones(150, bool))
    assert abs(track.baseline_dbfs + 30.0) < 0.2
    track.push(loud, np.ones(100, bool))
    figures = track.figures(12 * rate, 14 * rate, 13 * rate)
    assert abs(figures.loudness_dbfs + 18.0) < 0.1
    assert abs(figures.loudness_over_baseline_db - 12.0) < 0.3


def test_figures_measure_loudness_over_new_speech_and_span_over_held_frames():
    """Loudness covers only [new_from, end) voiced frames, voiced_ms only VAD-voiced frames, and frames past history_ms are gone."""
    rate = 8000
    track = ProsodyTrack(rate, history_ms=2000)
    quiet = np.round(sine(150.0, rate, 1.0, amplitude_for_dbfs(-30.0))).astype(np.int16)
    loud = np.round(sine(150.0, rate, 1.0, amplitude_for_dbfs(-18.0))).astype(np.int16)
    voiced = np.ones(50, bool)
    voiced[:10] = False
    track.push(quiet, voiced)
    track.push(loud, np.ones(50, bool))
    new_only = track.figures(0, 2 * rate, rate)
    both = track.figures(0, 2 * rate, 0)
    assert abs(new_only.loudness_dbfs + 18.0) < 0.1
    expected = 10 * math.log10((10 ** -3.0 * 40 + 10 ** -1.8 * 50) / 90)
    assert abs(both.loudness_dbfs - expected) < 0.1
    assert both.voiced_ms == 1800
    assert abs(both.pitch_hz - 150.0) < 1.5
    assert both.pitch_range_st is not None and both.pitch_range_st < 0.2
    track.push(loud, np.ones(50, bool))
    assert track.figures(0, 3 * rate, 0).voiced_ms == 2000  # only the last 2 s are held
    empty = track.figures(10 * rate, 11 * rate, 10 * rate)
    assert empty.loudness_dbfs == SILENCE_DBFS and empty.voiced_ms == 0 and empty.pitch_hz is None


def test_unvoiced_frames_are_not_pitched():
    """Frames the VAD marks unvoiced get no pitch and no voiced time even when they hold a tone."""
    rate = 16000
    track = ProsodyTrack(rate)
    track.push(np.round(sine(150.0, rate, 1.0, 8000)).astype(np.int16), np.zeros(50, bool))
    figures = track.figures(0, rate, 0)
    assert figures.pitch_hz is None and figures.voiced_ms == 0 and figures.speech_rate_spm is None
    assert abs(figures.loudness_dbfs - (20 * math.log10(8000 / math.sqrt(2) / 32768))) < 0.1


def test_pitch_jumps_flags_isolated_octave_errors_and_accepts_a_sustained_change():
    """A frame or two read an octave up amid steady pitch are jumps; a lasting move to a new pitch is accepted from the
    frame where it makes up half the reference; NaN frames are never jumps; too little reference flags nothing."""
    steady = [120.0] * 10
    f0 = np.array(steady + [240.0, 121.0, 250.0, 255.0, 119.0, np.nan, 120.0])
    assert np.flatnonzero(pitch_jumps(np.zeros(0), f0)).tolist() == [10, 12, 13]
    sustained = np.array(steady + [220.0] * 10)
    flagged = np.flatnonzero(pitch_jumps(np.zeros(0), sustained))
    assert flagged.tolist() == [10, 11, 12, 13, 14]  # from the 6th frame at 220 Hz the median of the last 9 moved
    assert not pitch_jumps(np.zeros(0), np.array([120.0, 240.0, 480.0])).any()  # fewer than 3 earlier values
    assert pitch_jumps(np.array([120.0] * 9), np.array([230.0, np.nan])).tolist() == [True, False]  # history counts
    assert not pitch_jumps(np.array([120.0] * 9), np.array([180.0])).any()  # 7 semitones is within the 9 allowed


def _pitch_jumps_frame_by_frame(previous, f0, max_jump_st=9.0, reference_frames=9, min_reference=3):
    """The jump test one frame at a time: median of the pitched values before each frame (NaN = no pitch)."""
    history = [float(v) for v in previous if not np.isnan(v)]
    flags = []
    for value in f0:
        if np.isnan(value):
            flags.append(False)
            continue
        reference = history[-reference_frames:]
        flags.append(len(reference) >= min_reference and abs(12.0 * np.log2(value / np.median(reference))) > max_jump_st)
        history.append(float(value))
    return np.array(flags, dtype=bool)


@pytest.mark.parametrize("seed", range(6))
def test_pitch_jumps_over_a_block_equals_the_frame_by_frame_test(seed):
    """Flagging a whole block of F0 values at once gives exactly the frame-by-frame answer, with no, a short or a full
    history before it, unpitched frames among them, octave errors and sustained moves, and with an uneven reference."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        previous = rng.uniform(90, 250, int(rng.integers(0, 14)))
        level = rng.uniform(90, 250)
        f0 = level * np.exp2(rng.normal(0, 0.05, int(rng.integers(0, 80))))
        f0[rng.random(len(f0)) < 0.1] *= 2.0  # octave errors
        f0[int(len(f0) * 0.6):] *= rng.choice([1.0, 1.9])  # a sustained move
        f0[rng.random(len(f0)) < 0.3] = np.nan
        for reference_frames, min_reference in ((9, 3), (8, 2)):
            expected = _pitch_jumps_frame_by_frame(previous, f0, reference_frames=reference_frames, min_reference=min_reference)
            got = pitch_jumps(previous, f0, reference_frames=reference_frames, min_reference=min_reference)
            assert got.tolist() == expected.tolist()


def test_octave_up_bursts_inside_a_steady_voice_do_not_widen_the_pitch_range():
    """Short bursts at twice the F0 in a steady 120 Hz voice are dropped from the pitch figures and counted as jumps."""
    rate = 8000
    voice = sawtooth(120.0, rate, 3.0)
    burst = sawtooth(240.0, rate, 0.06)
    for start in (0.5, 1.2, 1.9, 2.5):
        at = int(start * rate)
        voice[at:at + len(burst)] = burst
    track = ProsodyTrack(rate, history_ms=4000)
    track.push(to_int16(voice), np.ones(150, bool))
    figures = track.figures(0, 3 * rate, 0)
    assert abs(figures.pitch_hz - 120.0) < 2 and figures.pitch_range_st < 1.0
    totals = track.totals()
    assert totals["pitch_jumps"] >= 4 and totals["pitch_range_st"] < 1.0


# -- syllable nuclei --------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("syllables_per_s", [3, 4, 5])
def test_speech_rate_of_a_modulated_voiced_tone(rate, syllables_per_s):
    """A 140 Hz harmonic tone gated into syllables at a known rate gives a speech rate within 5% of 60 * rate."""
    seconds = 10
    signal = to_int16(syllable_train(syllables_per_s, rate, seconds, sawtooth(140.0, rate, seconds)))
    track = ProsodyTrack(rate, laughter=False)  # one sound repeated at 4-5 per second is a laugh (test_laughter.py)
    track.push(signal, np.ones(seconds * 50, bool))
    figures = track.figures(2 * rate, seconds * rate, 2 * rate)  # the 8 s still held
    assert figures.voiced_ms == 8000
    assert abs(figures.speech_rate_spm / (60 * syllables_per_s) - 1) < 0.05
    totals = track.totals()
    assert abs(totals["speech_rate_spm"] / (60 * syllables_per_s) - 1) < 0.05
    assert abs(totals["pitch_hz"] - 140.0) < 2.0


def test_speech_rate_over_baseline_is_the_rate_over_the_speakers_own_after_the_warm_up():
    """12 s at 3 syllables/s then 3 s at 5: the last window's rate over the speaker's own rate so far is 5 / (the call's
    mean rate), about 1.5; before the 10 s warm-up there is none, and at the steady pace it is about 1.0."""
    rate = 8000
    slow = syllable_train(3, rate, 12, sawtooth(140.0, rate, 12))
    fast = syllable_train(5, rate, 3, sawtooth(140.0, rate, 3))
    track = ProsodyTrack(rate, warmup_ms=10000, laughter=False)  # one sound 5 times a second is a laugh
    track.push(to_int16(slow[: 6 * rate]), np.ones(300, bool))
    assert track.figures(3 * rate, 6 * rate, 5 * rate).speech_rate_over_baseline is None  # 6 s of speech: warming up
    track.push(to_int16(slow[6 * rate:]), np.ones(300, bool))
    steady = track.figures(9 * rate, 12 * rate, 11 * rate)
    assert abs(steady.speech_rate_over_baseline - 1.0) < 0.1
    track.push(to_int16(fast), np.ones(150, bool))
    quick = track.figures(12 * rate, 15 * rate, 14 * rate)
    expected = 300.0 / (track.totals()["speech_rate_spm"])
    assert abs(quick.speech_rate_over_baseline - expected) < 0.05 and 1.3 < quick.speech_rate_over_baseline < 1.7


@pytest.mark.parametrize("separation_ms, per_pair", [(60, 1), (120, 2)])
def test_intensity_peaks_need_a_dip_of_more_than_2_db_between_them(separation_ms, per_pair):
    """Two voiced bumps 60 ms apart (about 1 dB dip between) are one nucleus; 120 ms apart (about 9 dB dip) they are two."""
    rate, seconds = 8000, 10
    width, offset = int(0.16 * rate), int(separation_ms * rate / 1000)
    envelope = np.zeros(seconds * rate)
    for start in range(0, seconds * rate - width - offset, rate):
        envelope[start : start + width] = np.hanning(width)
        envelope[start + offset : start + offset + width] = np.maximum(
            envelope[start + offset : start + offset + width], np.hanning(width))
    track = ProsodyTrack(rate)
    track.push(to_int16(envelope * sawtooth(140.0, rate, seconds)), np.ones(seconds * 50, bool))
    assert track.totals()["nuclei"] == seconds * per_pair


def test_a_peak_just_above_a_sag_in_the_same_vowel_is_no_second_nucleus():
    """A contour that sags 2.5 dB inside a vowel and swells 0.4 dB above the sag before falling away counts one nucleus
    (de Jong & Wempe's script alone counts two: only the dip after a peak is checked), a swell of 3 dB counts two, and
    the result is the same pushed all at once or a frame at a time; a negative rise is refused."""
    quiet = [-60.0] * 5
    sag = quiet + [-30.0, -22.0, -20.0, -21.0, -22.5, -22.1, -24.0] + quiet  # peak -20, sag -22.5, second peak -22.1
    swell = quiet + [-30.0, -22.0, -20.0, -21.0, -22.5, -19.5, -24.0] + quiet  # second peak 3 dB above the sag
    for contour, expected, script in ((sag, 1, 2), (swell, 2, 2)):
        contour = np.array(contour * 6)
        pitched = np.ones(len(contour), bool)
        at_once = SyllableNuclei().push(0, contour, pitched)
        detector = SyllableNuclei()
        one_by_one = np.concatenate([detector.push(i, contour[i : i + 1], pitched[i : i + 1]) for i in range(len(contour))])
        assert len(at_once) == 6 * expected and np.array_equal(at_once, one_by_one)
        assert len(SyllableNuclei(min_rise_db=0.0).push(0, contour, pitched)) == 6 * script
    with pytest.raises(ValueError, match="min_rise_db"):
        SyllableNuclei(min_rise_db=-1.0)


def test_the_level_range_of_a_span_is_small_for_a_held_tone_and_large_for_speech():
    """level_range_db: a steady tone moves under 1 dB in a second, the speech fixture far more than 10 dB; a span of
    fewer than five held frames has none."""
    rate = 8000
    tone = to_int16(0.3 * sawtooth(140.0, rate, 2.0))
    track = ProsodyTrack(rate)
    track.push(tone, np.ones(100, bool))
    assert track.level_range_db(rate // 2, 3 * rate // 2) < 1.0
    assert track.level_range_db(0, 4 * rate // 50) is None
    from tests.test_analytics_pipeline import speech_8k

    speech = np.clip(speech_8k(), -32768, 32767).astype(np.int16)[: 3 * rate]
    track = ProsodyTrack(rate)
    track.push(speech, np.ones(len(speech) // 160, bool))
    assert track.level_range_db(rate, 2 * rate) > 10.0


@pytest.mark.parametrize("rate", [8000, 16000])
def test_unvoiced_noise_bursts_give_no_nuclei(rate):
    """Noise bursts at a syllable rate have intensity peaks but no pitch, so they are not syllable nuclei."""
    seconds = 6
    noise = np.random.default_rng(3).normal(0, 1, seconds * rate)
    track = ProsodyTrack(rate)
    track.push(to_int16(syllable_train(4, rate, seconds, noise)), np.ones(seconds * 50, bool))
    totals = track.totals()
    assert totals["nuclei"] == 0 and totals["speech_rate_spm"] == 0.0
    assert totals["pitch_hz"] is None


def test_a_nucleus_confirmed_later_is_attributed_to_its_peak_frame():
    """A nucleus is confirmed only after the intensity dips, then counted in the span holding its peak."""
    rate = 8000
    source = sawtooth(140.0, rate, 2.0)
    envelope = np.zeros(2 * rate)
    envelope[rate : rate + 1200] = np.hanning(1200)  # one 150 ms syllable peaking at 1.075 s
    signal = to_int16(envelope * source)
    track = ProsodyTrack(rate)
    cut = 1100 * rate // 1000
    track.push(signal[:cut], np.ones(55, bool))
    assert track.totals()["nuclei"] == 0
    track.push(signal[cut:], np.ones(45, bool))
    assert track.totals()["nuclei"] == 1
    assert track.figures(1040 * rate // 1000, 1120 * rate // 1000, 0).nuclei == 1
    assert track.figures(1120 * rate // 1000, 2 * rate, 0).nuclei == 0


# -- streaming --------------------------------------------------------------------------------------


def test_results_do_not_depend_on_how_the_audio_is_chunked():
    """Pushing the same frames in 20 ms, 140 ms or one piece gives identical figures and totals."""
    rate = 16000
    seconds = 5
    signal = to_int16(syllable_train(4, rate, seconds, glottal_pulses(110.0, rate, seconds)))
    voiced = np.random.default_rng(1).random(seconds * 50) < 0.8
    results = []
    for frames_per_push in (1, 7, seconds * 50):
        track = ProsodyTrack(rate)
        step = frames_per_push * track.frame_samples
        for i in range(0, len(voiced), frames_per_push):
            track.push(signal[i * track.frame_samples : i * track.frame_samples + step], voiced[i : i + frames_per_push])
        results.append((track.figures(rate, 5 * rate, 4 * rate), track.totals()))
    assert results[0] == results[1] == results[2]
    assert results[0][1]["nuclei"] > 0


def test_skip_advances_the_clock_without_figures():
    """Skipped frames get no figures, and audio after a skip lands at its call position."""
    rate = 8000
    track = ProsodyTrack(rate)
    quiet = np.round(sine(150.0, rate, 1.0, amplitude_for_dbfs(-30.0))).astype(np.int16)
    loud = np.round(sine(150.0, rate, 1.0, amplitude_for_dbfs(-18.0))).astype(np.int16)
    track.push(quiet, np.ones(50, bool))
    track.skip(50)
    track.push(loud, np.ones(50, bool))
    assert track.frames_seen == 150
    assert track.figures(rate, 2 * rate, rate).voiced_ms == 0
    after = track.figures(2 * rate, 3 * rate, 2 * rate)
    assert after.voiced_ms == 1000 and abs(after.loudness_dbfs + 18.0) < 0.1
    assert track.totals()["voiced_ms"] == 2000
    with pytest.raises(ValueError):
        track.skip(-1)


def test_push_rejects_samples_that_are_not_whole_frames():
    """push raises when the sample count is not len(voiced) whole frames, and the constructor rejects unsupported rates."""
    track = ProsodyTrack(8000)
    with pytest.raises(ValueError):
        track.push(np.zeros(159, np.int16), np.ones(1, bool))
    with pytest.raises(ValueError):
        ProsodyTrack(44100)


def test_totals_and_as_dict_round_to_one_decimal_and_keep_none():
    """totals() and ProsodyFigures.as_dict() round floats to 1 decimal (the rate ratio to 2) and keep None."""
    figures = ProsodyFigures(-20.123, None, 151.26, None, 240.04, 1200, 4)
    assert figures.as_dict() == {
        "loudness_dbfs": -20.1, "loudness_over_baseline_db": None, "pitch_hz": 151.3, "pitch_range_st": None,
        "speech_rate_spm": 240.0, "voiced_ms": 1200, "nuclei": 4, "speech_rate_cpm": None, "speech_rate_over_baseline": None,
    }
    assert ProsodyFigures(-20.0, None, None, None, 240.0, 1200, 4, speech_rate_over_baseline=1.2345).as_dict()[
        "speech_rate_over_baseline"] == 1.23
    assert ProsodyFigures(-20.0, None, None, None, None, 0, 0, speech_rate_cpm=812.46).as_dict()["speech_rate_cpm"] == 812.5
    empty = ProsodyTrack(8000).totals()
    assert empty == {"loudness_dbfs": None, "baseline_dbfs": None, "pitch_hz": None, "pitch_range_st": None,
                     "speech_rate_spm": None, "voiced_ms": 0, "nuclei": 0, "pitch_jumps": 0, "laughs": 0, "laughter_ms": 0}
    track = ProsodyTrack(8000, warmup_ms=1000)
    track.push(np.round(sine(150.0, 8000, 2.0, amplitude_for_dbfs(-24.0))).astype(np.int16), np.ones(100, bool))
    totals = track.totals()
    assert totals["voiced_ms"] == 2000 and totals["loudness_dbfs"] == -24.0
    assert abs(totals["baseline_dbfs"] + 24.0) <= 0.2 and abs(totals["pitch_hz"] - 150.0) < 1.0
    assert all(v == round(v, 1) for v in totals.values() if isinstance(v, float))


# -- speech fixtures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, channel",
    [("customer_16k.wav", 0), ("call_stereo_8k.wav", 0), ("call_stereo_8k.wav", 1)],
)
def test_espeak_speech_has_plausible_pitch_and_speech_rate(name, channel):
    """On the espeak-ng fixtures the pitch lies in 70-300 Hz and the speech rate in 150-400 syllables per minute."""
    samples, rate = read_channel(SAMPLES / name, channel)
    samples, flags = vad_flags(samples, rate)
    track = ProsodyTrack(rate, history_ms=30000)
    step = track.frame_samples * 5
    for i in range(0, len(flags), 5):  # 100 ms chunks
        track.push(samples[i * track.frame_samples : i * track.frame_samples + step], flags[i : i + 5])
    figures = track.figures(0, len(samples), 0)
    assert 70 <= figures.pitch_hz <= 300
    assert 150 <= figures.speech_rate_spm <= 400
    assert figures.voiced_ms >= 3000
    totals = track.totals()
    assert 70 <= totals["pitch_hz"] <= 300 and 150 <= totals["speech_rate_spm"] <= 400


@pytest.mark.parametrize("rate", [8000, 16000])
def test_low_passing_only_what_yin_reads_gives_the_samples_of_low_passing_everything(rate):
    """The pitch low-pass computed over scattered stretches (the windows of voiced frames) gives exactly the samples
    that filtering the whole block gives, at 8 kHz and through the 16 kHz polyphase decimation."""
    from service.analytics.prosody import _lowpass, _lowpass_spans, _pitch_taps

    rng = np.random.default_rng(rate)
    taps = _pitch_taps(rate)
    decimation = rate // 8000
    for _ in range(30):
        count = int(rng.integers(1, 60)) * 160
        ext = rng.normal(0, 3000, len(taps) - 1 + count * decimation)
        whole = _lowpass(ext, taps, decimation, 0, count)
        if decimation == 2:  # the filter as one pass over the block, polyphase at 16 kHz
            reference = np.convolve(ext[1::2], taps[0::2], mode="valid")
            reference += np.convolve(ext[0::2], taps[1::2], mode="valid")[1:]
        else:
            reference = np.convolve(ext, taps, mode="valid")
        assert np.array_equal(whole, reference)
        starts = np.sort(rng.integers(0, count, 4))
        spans = [(int(a), int(min(count, a + rng.integers(1, 800)))) for a in starts]
        y = _lowpass_spans(ext, taps, decimation, count, spans)
        inside = np.zeros(count, bool)
        for a, b in spans:
            inside[a:b] = True
        assert np.array_equal(y[inside], whole[inside]) and not y[~inside].any()


def test_yins_loose_voicing_flag_takes_noisy_voiced_frames_that_get_no_f0():
    """yin() flags a frame periodic by the looser voicing threshold wherever it finds an F0 and also where noise keeps
    d' above the strict threshold (a breathy vowel: no F0, still voiced enough for a syllable nucleus); pure noise is
    neither; without a voicing threshold the flags are exactly the frames with an F0."""
    rate, rng = 8000, np.random.default_rng(3)
    clean = np.stack([sine(150, rate, 0.04, 8000, phase=p) for p in np.linspace(0, 3, 20)])
    breathy = clean + rng.normal(0, 3000, clean.shape)  # about 6 dB SNR: d' dips to 0.15-0.35
    noise = rng.normal(0, 8000, clean.shape)
    frames = np.concatenate((clean, breathy, noise))
    f0, periodic = yin(frames, rate, voicing_threshold=0.35)
    has_f0 = ~np.isnan(f0)
    assert has_f0[:20].all() and periodic[:20].all()
    assert np.count_nonzero(periodic[20:40]) > np.count_nonzero(has_f0[20:40])
    assert not periodic[40:].any() and not has_f0[40:].any()
    assert (periodic | ~has_f0).all()  # every frame with an F0 is periodic
    strict_f0, strict = yin(frames, rate)
    assert np.array_equal(strict, ~np.isnan(strict_f0)) and np.array_equal(np.isnan(strict_f0), np.isnan(f0))


def test_the_sorted_median_and_quantiles_equal_numpys_bit_for_bit():
    """sorted_median and sorted_quantile on sorted arrays give exactly np.median and np.percentile (linear), for every
    length from 1 to 200, rounded and unrounded pitch values, and the quantiles the figures use."""
    from service.analytics.prosody import sorted_median, sorted_quantile

    rng = np.random.default_rng(7)
    for trial in range(4000):
        n = 1 + trial % 200
        values = rng.uniform(60, 400, n)
        if trial % 3 == 0:
            values = np.round(values, 1)  # ties
        ordered = np.sort(values)
        assert sorted_median(ordered) == float(np.median(values))
        for q in (0.0, 0.1, 0.5, 0.9, 1.0):
            assert sorted_quantile(ordered, q) == float(np.percentile(values, q * 100))
