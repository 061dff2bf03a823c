"""Laughter: runs of bursts of one sound are not syllables (service/analytics/laughter.py and its use in prosody)."""

import subprocess

import numpy as np
import pytest

from clients import signals
from service.analytics.laughter import CEPSTRA, LaughterRuns, envelopes
from service.analytics.prosody import ProsodyTrack
from tests.test_analytics_pipeline import RATE, run_session, speech_8k

LAUGH = "aaaaaaaa"  # eight bursts of one vowel, 200 ms apart: "ha-ha-ha-ha..."
SYLLABLES = "aiuoeaiu"  # the same pace and voice moving from vowel to vowel, as speech does


def _track(x: np.ndarray, rate: int, chunk_frames: int | None = None, laughter: bool = True) -> ProsodyTrack:
    frame = rate // 50
    voiced = np.abs(x[: len(x) // frame * frame].reshape(-1, frame).astype(np.float64)).max(axis=1) > 300
    track = ProsodyTrack(rate, laughter=laughter)
    step = chunk_frames or len(voiced)
    for start in range(0, len(voiced), step):
        end = min(len(voiced), start + step)
        track.push(x[start * frame : end * frame], voiced[start:end])
    return track


def test_a_run_reaching_its_fourth_similar_burst_is_taken_whole_then_burst_by_burst():
    """Four nuclei 200 ms apart with one envelope are returned together at the fourth, the fifth on its own, and a
    dissimilar nucleus ends the run: one laugh of five bursts."""
    runs = LaughterRuns(frame_ms=20)
    same = np.zeros((1, CEPSTRA))
    other = np.full((1, CEPSTRA), 10.0)
    taken = [runs.push(np.array([frame]), same) for frame in (10, 20, 30)]
    assert taken == [[], [], []]
    assert runs.push(np.array([40]), same) == [10, 20, 30, 40]
    assert runs.push(np.array([50]), same) == [50]
    assert runs.totals() == (1, (50 - 10 + 10) * 20)  # the run in progress counts already
    assert runs.push(np.array([60]), other) == []
    assert (runs.laughs, runs.nuclei) == (1, 5)


def test_a_gap_or_an_unheard_envelope_breaks_a_run():
    """Nuclei more than 250 ms apart, or one whose audio was not held (NaN), do not chain: no laugh."""
    runs = LaughterRuns(frame_ms=20)
    same = np.zeros((1, CEPSTRA))
    for frame in (0, 10, 20, 40, 50):  # 20 -> 40 is 400 ms
        assert runs.push(np.array([frame]), same) == []
    runs.reset()
    nan = np.full((1, CEPSTRA), np.nan)
    for frame, row in ((0, same), (10, same), (20, nan), (30, same), (40, same)):
        assert runs.push(np.array([frame]), row) == []
    assert runs.totals() == (0, 0)


def test_a_run_whose_bursts_are_not_breathed_apart_is_no_laugh_until_half_its_gaps_are():
    """Four similar nuclei with voicing unbroken in two of their three gaps are no laugh (connected speech keeps voicing
    through its consonants); a fifth after a broken gap makes half the gaps broken: the run is taken whole."""
    runs = LaughterRuns(frame_ms=20)
    same = np.zeros((1, CEPSTRA))
    for frame, broken in ((10, True), (20, False), (30, False), (40, True)):
        assert runs.push(np.array([frame]), same, np.array([broken])) == []
    assert runs.totals() == (0, 0)
    assert runs.push(np.array([50]), same, np.array([True])) == [10, 20, 30, 40, 50]
    assert runs.push(np.array([60]), same, np.array([False])) == [60]  # a laugh already: every later burst is its
    assert runs.totals()[0] == 1


@pytest.mark.parametrize("kwargs", [{"min_bursts": 1}, {"max_gap_ms": 10}, {"max_distance": 0.0}, {"min_broken_share": 1.5}])
def test_bad_laughter_parameters_are_refused(kwargs):
    """A run of one burst, a gap shorter than a frame, a non-positive distance or a share above 1 is refused with a
    clear error."""
    with pytest.raises(ValueError):
        LaughterRuns(frame_ms=20, **kwargs)


def test_one_vowel_has_one_envelope_and_different_vowels_do_not():
    """The envelope distance between two bursts of /a/ a little lower (as a laugh's pitch falls) is small, between /a/
    and /i/ at one pitch large."""
    a1 = signals.vowel("a", 0.064, 240.0, 230.0)
    a2 = signals.vowel("a", 0.064, 228.0, 219.0)
    i1 = signals.vowel("i", 0.064, 240.0, 230.0)
    rows = envelopes(np.stack([a1, a2, i1]) * 8000, RATE)
    assert np.linalg.norm(rows[0] - rows[1]) < 6.0 < np.linalg.norm(rows[0] - rows[2])


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_laugh_counts_no_syllables_and_speech_at_its_pace_counts_every_one(rate):
    """Eight bursts of one vowel are one laugh of about 1.6 s with no syllable nucleus and no speech rate; eight bursts
    moving between vowels at the same pace are eight nuclei and no laugh; without the laughter check the laugh was
    eight syllables."""
    laugh = signals.int16(signals.bursts(LAUGH, rate=rate))
    speech = signals.int16(signals.bursts(SYLLABLES, rate=rate))
    totals = _track(laugh, rate).totals()
    assert (totals["laughs"], totals["nuclei"], totals["speech_rate_spm"]) == (1, 0, None)
    assert 1300 <= totals["laughter_ms"] <= 1700
    spoken = _track(speech, rate).totals()
    assert (spoken["laughs"], spoken["nuclei"]) == (0, len(SYLLABLES))
    assert _track(laugh, rate, laughter=False).totals()["nuclei"] == len(LAUGH)


def test_one_vowel_swelling_five_times_a_second_without_a_breath_is_syllables_not_a_laugh():
    """A held /a/ whose loudness swells five times a second but never stops being voiced has the envelope and pace of a
    laugh but no breath between its swells: its nuclei stay syllables; the same swells with breaths between are a laugh."""
    seconds = 1.8
    t = np.arange(int(seconds * RATE)) / RATE
    swell = 0.25 + 0.75 * (0.5 - 0.5 * np.cos(2 * np.pi * 5 * t))
    held = signals.int16(np.concatenate([np.zeros(RATE // 4), 9000 * swell * signals.vowel("a", seconds, 240.0, 220.0),
                                         np.zeros(RATE // 2)]))
    track = _track(held, RATE)
    assert track.totals()["laughs"] == 0 and track.totals()["nuclei"] >= 6
    assert _track(signals.int16(signals.bursts(LAUGH)), RATE).totals()["laughs"] == 1


def test_a_laugh_after_a_stretch_without_audio_is_still_a_laugh():
    """A laugh, ten minutes of audio that never came (skip), and the same laugh: two laughs, as the first alone is one."""
    laugh = signals.int16(signals.bursts(LAUGH))
    once = _track(laugh, RATE).totals()
    track = _track(laugh, RATE)
    track.skip(30_000)
    frame = RATE // 50
    voiced = np.abs(laugh[: len(laugh) // frame * frame].reshape(-1, frame).astype(np.float64)).max(axis=1) > 300
    track.push(laugh[: len(voiced) * frame], voiced)
    assert once["laughs"] == 1 and track.totals()["laughs"] == 2 and track.totals()["nuclei"] == 2 * once["nuclei"]


def test_laughter_is_found_the_same_whatever_the_pushes():
    """The laugh pushed 20 ms at a time gives the same totals as in one block."""
    laugh = signals.int16(np.concatenate([signals.bursts(LAUGH), signals.bursts(SYLLABLES, seed=1)]))
    assert _track(laugh, RATE, chunk_frames=1).totals() == _track(laugh, RATE).totals()


def test_a_window_after_the_laugh_reads_the_speech_rate_of_the_speech_alone():
    """Laughter then speech in one window: the window's nuclei and rate are those of the speech, its laughter frames
    left out of the voiced time the rate divides by."""
    laugh = signals.bursts(LAUGH)
    speech = signals.bursts(SYLLABLES * 2, seed=1)
    track = _track(signals.int16(np.concatenate([laugh, speech])), RATE)
    end = len(laugh) + len(speech)
    both = track.figures(0, end, 0)
    alone = _track(signals.int16(speech), RATE).figures(0, len(speech), 0)
    assert both.nuclei == alone.nuclei == 2 * len(SYLLABLES)
    assert abs(both.speech_rate_spm - alone.speech_rate_spm) / alone.speech_rate_spm < 0.1


RATE_RULE = """rules:
  - id: fast
    speaker: customer
    speech_rate_spm: {gt: 180}
    severity: high
    notify: [agent]
    cooldown: 1s
    message: fast
"""


async def test_a_laughing_customer_raises_no_speech_rate_alert_and_the_summary_counts_the_laughs():
    """Four laughs on the customer channel: no speech-rate alert (each read 280+ syllables per minute before), the
    summary gives four laughs and no nuclei; the customer's speech afterwards still reads a rate."""
    pause = np.zeros(RATE // 2)
    laughs = np.concatenate([np.concatenate([signals.bursts(LAUGH, seed=i), pause]) for i in range(4)])
    audio = signals.int16(laughs)[:, None]
    alerts, _, summary = await run_session(audio, rules_text=RATE_RULE)
    prosody = summary.document["speakers"][0]["prosody"]
    assert alerts == [] and (prosody["laughs"], prosody["nuclei"]) == (4, 0), prosody
    with_speech = np.concatenate([audio[:, 0], np.clip(speech_8k(), -32768, 32767).astype(np.int16)])[:, None]
    _, _, summary = await run_session(with_speech, rules_text=RATE_RULE)
    prosody = summary.document["speakers"][0]["prosody"]
    assert prosody["laughs"] == 4 and prosody["nuclei"] > 10 and prosody["speech_rate_spm"] > 100


def test_the_signal_evaluation_counts_laughs_and_syllables_per_class_of_voice_clips(tmp_path):
    """clients.eval_signal's voice clips (VOICE/NAME.ogg as hedgewars-data lays them out): a generated laugh is found
    and its syllables taken out, speech at its pace keeps every syllable, and the classes come from the file names."""
    import soundfile

    from clients.eval_signal import vocal_sounds

    for voice, seed in (("One", 0), ("Two", 1)):
        (tmp_path / voice).mkdir()
        soundfile.write(tmp_path / voice / "Laugh.wav", signals.int16(signals.bursts(LAUGH, seed=seed)), RATE)
        soundfile.write(tmp_path / voice / "Hello.wav", signals.int16(signals.bursts(SYLLABLES, seed=seed)), RATE)
        for name in ("Laugh", "Hello"):
            wav = tmp_path / voice / f"{name}.wav"
            assert not subprocess.run(["sox", str(wav), str(wav.with_suffix(".ogg"))]).returncode
    classes = vocal_sounds([str(tmp_path)], str(tmp_path))
    assert classes["laughter"]["clips"] == 2 and classes["laughter"]["with_laugh"] == 2
    assert classes["laughter"]["nuclei"] < classes["laughter"]["nuclei_without_check"]
    assert classes["speech"]["with_laugh"] == 0 and classes["speech"]["nuclei"] == classes["speech"]["nuclei_without_check"] > 0
