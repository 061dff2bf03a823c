"""The steady-sound gate: tones and music are not speech, on generated signals with known answers and real speech."""

import shutil
import subprocess

import numpy as np
import pytest
import webrtcvad

from clients.wavfile import read_wav
from service.analytics.crosstalk import speaking_frames
from service.analytics.gate import FrameMarks, SteadyGate
from service.config import AnalyticsConfig
from service.domain import Role
from clients import signals
from tests.conftest import CALL_WAV, CUSTOMER_WAV
from tests.test_analytics_pipeline import RATE, run_session, speech_8k

FRAME = 160  # 20 ms at 8 kHz


def vad(x: np.ndarray, rate: int = RATE) -> np.ndarray:
    detector, step = webrtcvad.Vad(2), rate // 50
    return np.array([detector.is_speech(x[i * step:(i + 1) * step].tobytes(), rate) for i in range(len(x) // step)])


def steady_share(x: np.ndarray, voiced: np.ndarray | None = None, rate: int = RATE) -> float:
    """Share of the VAD-voiced frames of `x` that the gate takes as steady sound."""
    voiced = vad(x, rate) if voiced is None else voiced
    state = SteadyGate(rate // 50).push(x, len(voiced))
    return float(np.count_nonzero(state & voiced)) / max(1, int(np.count_nonzero(voiced)))


TONES = {
    "US ringback": signals.tones(440, 480, seconds=2.0),
    "UK ringback": signals.tones(400, 450, seconds=2.0),
    "busy": signals.tones(480, 620, seconds=2.0),
    "dial tone": signals.tones(350, 440, seconds=2.0),
    "fax CNG": signals.tones(1100, seconds=2.0),
    "fax CED": signals.tones(2100, seconds=2.0),
    "SIT": signals.tones(913.8, seconds=2.0),
    "DTMF 5 held": signals.tones(*signals.DTMF["5"], seconds=2.0),
}


@pytest.mark.parametrize("name", sorted(TONES))
def test_a_tone_is_steady_sound_after_its_first_400_ms(name):
    """Every call-progress, fax, SIT and held DTMF tone, which webrtcvad takes for speech, is steady sound from its sixth
    80 ms block on (the first five decide it)."""
    x = signals.int16(TONES[name])
    voiced = vad(x)
    assert voiced.mean() > 0.9
    state = SteadyGate(FRAME).push(x, len(voiced))
    assert not state[:20].any() and state[20:].all()


@pytest.mark.parametrize("seed", [0, 5])
def test_generated_music_with_chords_melody_and_drums_is_steady_sound(seed):
    """Twenty seconds of chords, a melody and drums, voiced to webrtcvad in almost every frame, are steady sound in at
    least 90% of those frames."""
    x = signals.int16(signals.music(20.0, seed=seed))
    voiced = vad(x)
    assert voiced.mean() > 0.9
    assert steady_share(x, voiced) >= 0.9


def test_real_speech_is_almost_never_steady_sound():
    """The speech of both channels of the bundled call and of the 16 kHz customer fixture: at most 1% of the frames
    that speak (VAD, near silence and crosstalk removed) are taken as steady sound."""
    call = read_wav(str(CALL_WAV)).samples.astype(np.int16)
    n = len(call) // FRAME
    voiced = np.stack([vad(call[:, c]) for c in range(2)], axis=1)[:n]
    speaking, _ = speaking_frames([call[: n * FRAME, c] for c in range(2)], voiced, FRAME, 20.0)
    for c in range(2):
        assert speaking[:, c].sum() > 300
        assert steady_share(call[: n * FRAME, c], speaking[:, c]) <= 0.01
    customer = read_wav(str(CUSTOMER_WAV))
    x = customer.samples[:, 0].astype(np.int16)
    assert steady_share(x, rate=customer.sample_rate) <= 0.01


def test_decisions_do_not_depend_on_how_the_audio_is_split():
    """Music then speech pushed a frame at a time and in pushes of 7 frames give the same decisions and hold figures."""
    x = np.concatenate([signals.int16(signals.music(8.0)), read_wav(str(CALL_WAV)).samples[:, 0].astype(np.int16)])
    frames = len(x) // FRAME
    one, seven = SteadyGate(FRAME), SteadyGate(FRAME)
    a = np.concatenate([one.push(x[i * FRAME:(i + 1) * FRAME], 1) for i in range(frames)])
    b = np.concatenate([seven.push(x[i * FRAME:min(i + 7, frames) * FRAME], min(7, frames - i)) for i in range(0, frames, 7)])
    assert (a == b).all() and a[:400].mean() > 0.8 and a[500:].mean() < 0.05
    assert (one.holds, one.hold_frames, one.steady_frames) == (seven.holds, seven.hold_frames, seven.steady_frames)


def _blocks_of_tones(freqs: list[float]) -> np.ndarray:
    """One 80 ms block (4 frames of 8 kHz) of a pure tone per frequency, one after the other."""
    t = np.arange(4 * FRAME) / RATE
    return np.concatenate([(8000 * np.sin(2 * np.pi * f * t)).astype(np.int16) for f in freqs])


def test_a_lone_steady_block_stops_the_gate_deciding_once_it_can_no_longer_start_an_entry():
    """One block that matches its predecessor (a held vowel) keeps the gate deciding only while three more steady
    blocks could still arrive before it leaves the last six: three unsteady blocks later it decides nothing, so the
    windows of speech do not wait for it."""
    gate = SteadyGate(FRAME)
    changing = [300.0 + 170.0 * k for k in range(6)]  # a new pitch each block: consecutive blocks do not overlap
    gate.push(_blocks_of_tones(changing), 24)
    assert gate.earliest_entry_frame() is None and not gate.deciding
    gate.push(_blocks_of_tones(changing[-1:]), 4)  # the same tone as the block before it: one steady block
    assert gate.deciding and gate.earliest_entry_frame() == 20  # an entry would take from the block before it
    for k, f in enumerate([600.0, 1300.0, 2400.0]):
        gate.push(_blocks_of_tones([f]), 4)
        assert gate.deciding == (k < 2)
    assert gate.earliest_entry_frame() is None


def test_a_long_steady_stretch_is_a_hold_and_a_short_one_is_not():
    """40 s of music is one hold of most of its length (the time to decide, and a bar where chords, melody and drums all
    change at once, are not); a 2 s tone is steady but no hold."""
    gate = SteadyGate(FRAME, hold_min_ms=5000)
    x = signals.int16(signals.music(40.0))
    gate.push(x, len(x) // FRAME)
    assert gate.holds == 1 and 34_000 <= gate.hold_frames * 20 <= 40_000 and gate.steady
    assert gate.hold_ms >= 20_000
    tone = SteadyGate(FRAME, hold_min_ms=5000)
    tone.push(signals.int16(TONES["US ringback"]), 100)
    assert tone.holds == 0 and tone.steady_frames > 0 and tone.hold_ms == 0


def test_frame_marks_count_speech_and_steady_frames_of_a_span():
    """FrameMarks counts the speech and steady frames of any held span, and forgets frames older than its capacity."""
    marks = FrameMarks(10)
    marks.push(np.array([1, 1, 0, 0, 0, 1], bool), np.array([0, 0, 1, 1, 0, 0], bool))
    assert marks.count(0, 6) == (3, 2) and marks.count(2, 4) == (0, 2)
    marks.skip(3)
    marks.push(np.ones(8, bool), np.zeros(8, bool))
    assert marks.count(0, 17) == (8, 0)  # frames 0..6 are gone, 6..8 were skipped


ANGRY_RULE = """rules:
  - id: angry
    speaker: customer
    all:
      - emotion: [angry]
        min: 0.6
        for: 1s
    severity: high
    notify: [agent]
    cooldown: 10s
    message: angry
"""


@pytest.mark.parametrize("name", ["music", "ringback", "dtmf"])
async def test_tones_and_music_never_reach_the_model_count_as_talk_or_alert(name):
    """Music, a ringing line or DTMF digits on the customer channel, loud enough that the scripted model would call them
    angry: no window is scored, no talk time or speech, no alert; the customer's speech after them still alerts."""
    sound = {"music": signals.music(12.0), "ringback": signals.cadence((440, 480), 2.0, 4.0, 12.0),
             "dtmf": signals.dtmf("1234567890#")}[name]
    gap = np.zeros(RATE)
    alone = signals.int16(np.concatenate([sound, gap]))[:, None]
    alerts, updates, summary = await run_session(alone, rules_text=ANGRY_RULE)
    customer = summary.document["speakers"][0]
    assert alerts == [] and updates == [] and customer["windows_scored"] == 0, customer
    assert summary.document["conversation"]["talk_ms"]["customer"] <= 1000
    assert customer["prosody"]["voiced_ms"] <= 1000 and customer["steady_sound_ms"] > 3000
    then_speech = np.concatenate([alone[:, 0], np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)])[:, None]
    alerts, updates, summary = await run_session(then_speech, rules_text=ANGRY_RULE)
    assert [a.rule_id for a in alerts] == ["angry"] and updates
    assert all(u.window_end_ms > len(alone) * 1000 // RATE for u in updates)


async def test_forty_seconds_of_hold_music_is_hold_time_and_no_dead_air():
    """Stereo: the customer speaks, the agent's channel plays music for 40 s while nobody speaks, the agent comes back:
    the summary has one hold of about 40 s on the agent, no dead-air alert and no listed silence during the music; with
    the gate off the same call reads as the agent talking for 40 s."""
    speech = np.clip(speech_8k(), -32768, 32767).astype(np.int16)
    hold = signals.int16(signals.music(40.0))
    quiet = np.zeros(len(hold), np.int16)
    customer = np.concatenate([speech, quiet, np.zeros(len(speech), np.int16)])
    agent = np.concatenate([np.zeros(len(speech), np.int16), hold, speech])
    audio = np.stack([customer, agent], axis=1)
    roles = (Role.CUSTOMER, Role.AGENT)
    alerts, _, summary = await run_session(audio, roles=roles)
    conversation = summary.document["conversation"]
    agent_doc = summary.document["speakers"][1]
    assert agent_doc["hold"]["count"] == 1 and 34_000 <= agent_doc["hold"]["ms"] <= 40_000
    assert conversation["hold"] == agent_doc["hold"]
    assert not [a for a in alerts if a.rule_id == "dead-air"]
    start_ms = len(speech) * 1000 // RATE
    assert not [s for s in conversation["silences"] if s["start_ms"] + s["duration_ms"] > start_ms + 2000
                and s["start_ms"] < start_ms + 38_000], conversation["silences"]
    assert conversation["talk_ms"]["agent"] < 5000
    _, _, off = await run_session(audio, roles=roles, analytics=AnalyticsConfig(steady_gate=False))
    assert off.document["conversation"]["talk_ms"]["agent"] > 30_000 and "hold" not in off.document["conversation"]
    rules = HOLD_RULES
    alerts, _, _ = await run_session(audio, roles=roles, rules_text=rules)
    assert [a.rule_id for a in alerts] == ["long-hold"]
    assert start_ms + 20_000 <= alerts[0].fired_ms <= start_ms + 21_000 and alerts[0].start_ms <= start_ms + 1000


HOLD_RULES = """rules:
  - id: long-hold
    hold: {ge: 20s, channel: agent}
    notify: [agent]
    message: the customer has been on hold for a while
  - id: dead
    silence: {ge: 5s}
    notify: [agent]
    message: dead air
"""


def test_the_signal_evaluation_reports_each_class_of_the_development_set():
    """clients.eval_signal, run on what a fresh clone has (generated music and tones, the bundled speech), reports per
    class the voiced frames and the share taken as steady sound: high for music and held tones, near zero for speech."""
    from clients.eval_signal import evaluate

    result = evaluate([], skip=0.0, seconds=1.0, espeak=False)
    classes = result["classes"]
    assert classes["music (Debian packages)"]["clips"] == 0
    assert classes["music (generated)"]["clips"] == 3 and classes["music (generated)"]["steady_share"] >= 0.9
    assert classes["tones"]["clips"] == 9 and classes["tones"]["steady_share"] >= 0.6
    assert classes["speech"]["clips"] >= 3 and classes["speech"]["steady_share"] <= 0.01
    held = next(c for c in result["clips"]["tones"] if c["clip"].startswith("DTMF digits (0.5 s"))
    assert held["steady"] >= 0.8 * held["voiced"]


@pytest.fixture(scope="module")
def speech_rate(tmp_path_factory):
    """clients.eval_signal's speech-rate part: espeak-ng sentences in English and Mandarin at three rates."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("needs espeak-ng and sox (make sysdeps)")
    from clients.eval_signal import speech_rate_error

    return speech_rate_error(str(tmp_path_factory.mktemp("rate")))


@pytest.mark.parametrize("language,max_error", [("English", 0.15), ("Mandarin", 0.15)])
def test_speech_rate_on_espeak_ng_at_three_rates_orders_them_and_lands_within_the_stated_error(speech_rate, language, max_error):
    """The service's syllable rate of espeak-ng sentences spoken at 120, 170 and 230 words per minute rises with the
    speaking rate, follows the true rate per utterance (r >= 0.8) and is within the README's stated mean error of the
    true syllable count (15%, English and Mandarin from pinyin)."""
    rows = [r for r in speech_rate["utterances"] if r["language"] == language]
    assert len(rows) == 9 and all(r["measured_spm"] > 0 for r in rows)
    measured = [np.mean([r["measured_spm"] for r in rows if r["wpm"] == wpm]) for wpm in (120, 170, 230)]
    truth = [np.mean([r["true_spm"] for r in rows if r["wpm"] == wpm]) for wpm in (120, 170, 230)]
    assert truth[0] < truth[1] < truth[2]
    assert measured[0] < measured[1] < measured[2]
    figures = speech_rate["languages"][language]["service"]
    assert figures["mean_abs_error"] <= max_error and figures["pearson_r"] >= 0.8


def test_the_service_counts_syllables_as_the_de_jong_and_wempe_script_does_in_praat(speech_rate):
    """Beside the truth, the same utterances through the de Jong & Wempe procedure in Praat (parselmouth): the service's
    count is within 15% of the reference's on average and follows it per utterance."""
    pytest.importorskip("parselmouth")
    from clients.eval_signal import ipa_syllables

    assert ipa_syllables("hello world") == 3
    rows = speech_rate["utterances"]
    service = np.array([r["service_nuclei"] for r in rows], float)
    reference = np.array([r["dejong_nuclei"] for r in rows], float)
    assert np.mean(np.abs(service / reference - 1)) <= 0.15
    assert np.corrcoef(service, reference)[0, 1] >= 0.8


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="needs espeak-ng and sox (make sysdeps)")
def test_interruptions_and_back_channels_of_labelled_scenes_are_counted_as_labelled(tmp_path):
    """clients.eval_signal's two-speaker scenes through the batch analysis: turns, back-channels, take-overs by either
    side, a contested overlap, and one in which the first speaker pauses 240 ms at a comma just after the other came
    in (a pause inside one's own talk does not give up the floor), are counted exactly as labelled."""
    from clients.eval_signal import conversation_scenes

    result = conversation_scenes(str(tmp_path))
    assert len(result["scenes"]) == 7
    assert [row["scene"] for row in result["scenes"] if row["counted"] != row["expected"]] == []
    assert result["labelled_found"] == 7 and result["labelled_missed"] == 0 and result["unlabelled_counted"] == 0


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="needs espeak-ng and sox (make sysdeps)")
def test_the_transcribed_evaluation_reads_a_kaldi_directory_and_counts_syllables_per_language(tmp_path):
    """clients.eval_signal's real-recording speech rate: utterances of a Kaldi data directory (from wav.scp or beside text)
    are counted against their transcripts' syllables: a Chinese character each, an English text's as espeak-ng says it;
    one mixing Chinese and Latin letters is left out; a directory without `text` is refused by name."""
    from clients.eval_signal import ipa_syllables, transcribed_rate

    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    pinyin = "wo3 men5 jin1 tian1 xia4 wu3 qu4 gong1 yuan2 san4 bu4"
    english = "we will walk in the park this afternoon"
    subprocess.run(["espeak-ng", "-v", "cmn-latn-pinyin", "-s", "150", "-w", str(data / "audio" / "a.wav"), pinyin], check=True)
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(data / "d.wav"), english], check=True)
    shutil.copy(data / "audio" / "a.wav", data / "b.wav")
    shutil.copy(data / "audio" / "a.wav", data / "c.wav")
    (data / "wav.scp").write_text("a audio/a.wav\n", encoding="utf-8")
    (data / "text").write_text(f"a 我们 今天 下午 去 公园 散步\nb 我们今天下午去公园散步。\nc 我们去 KTV\nd {english.upper()}\n",
                               encoding="utf-8")
    result = transcribed_rate([str(data)], str(tmp_path))
    rows = result["utterances"]
    assert [(row["utterance"], row["language"]) for row in rows] == [("a", "Mandarin"), ("b", "Mandarin"), ("d", "English")]
    assert all(row["syllables"] == 11 and 6 <= row["service_nuclei"] <= 22 for row in rows[:2])
    assert rows[2]["syllables"] == ipa_syllables(english) >= 9 and rows[2]["service_nuclei"] > 0
    languages = result["summary"]["languages"]
    assert result["summary"]["utterances"] == 3 and languages["Mandarin"]["syllables"] == 22 and languages["English"]["utterances"] == 1
    assert 0.5 <= languages["Mandarin"]["service"]["mean_ratio"] <= 2.0
    (data / "text").unlink()
    with pytest.raises(FileNotFoundError, match="text"):
        transcribed_rate([str(data)], str(tmp_path))


def test_the_cough_evaluation_counts_the_syllables_of_every_readable_clip(tmp_path):
    """clients.eval_signal's coughs-alone figures: every readable clip of the directories is counted, at 8 kHz whatever its
    rate, with the syllable nuclei the service's tracker finds in it; silence has none and a file that is no audio is left
    out, not counted."""
    import soundfile

    from clients.eval_signal import cough_sounds, service_nuclei

    speech = np.clip(np.round(speech_8k()), -32768, 32767).astype(np.int16)
    soundfile.write(tmp_path / "a.wav", speech, RATE, subtype="PCM_16")
    soundfile.write(tmp_path / "b.flac", np.zeros(RATE * 2, np.int16), RATE, subtype="PCM_16")
    (tmp_path / "c.mp3").write_bytes(b"not audio")
    result = cough_sounds([str(tmp_path)])
    nuclei, voiced_ms = service_nuclei(speech)
    assert nuclei > 0
    assert result["clips"] == 2 and result["nuclei"] == nuclei and result["clips_with_nuclei"] == 1
    assert result["voiced_ms"] == voiced_ms and result["audio_s"] == round(len(speech) / RATE + 2, 1)
    assert cough_sounds([str(tmp_path / "missing")]) is None


def test_channel_sounds_take_a_tone_out_of_speech_mark_it_and_latch_on_two_loud_not_speech_answers():
    """ChannelSounds over a stereo block (a held tone on one channel, speech on the other): the tone's voiced frames
    leave the VAD flags, sound on the line and are marked steady for its windows; two loud not-speech answers on the
    speech channel latch it once applied (the frames of those windows that counted as speech are taken back, its next
    frames are taken out and marked as the latch's), and two speech answers in a row, or a window never answered,
    release it."""
    from service.analytics.sound import ChannelSounds

    frame = RATE // 50
    tone = signals.int16(signals.tones(440.0, seconds=4.0))
    speech = np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)[: len(tone)]
    speech = np.pad(speech, (0, len(tone) - len(speech)))
    flags = np.stack([vad(tone), vad(speech)], axis=1)
    n = len(flags)
    sounds = ChannelSounds(2, frame, 20, hold_min_ms=1000, history_frames=500)
    kept, present, state = sounds.separate([tone[: n * frame], speech[: n * frame]], flags)
    assert present is not None and state is not None
    assert np.count_nonzero(kept[:, 0]) < 0.2 * np.count_nonzero(flags[:, 0])  # the tone is no one's speech
    assert np.array_equal(kept[:, 1], flags[:, 1])  # the speech channel keeps its voice
    sounds.mark(kept)
    assert sounds.mostly_steady(0, 50, n) and not sounds.mostly_steady(1, 0, n)
    summary = sounds.summary(0)
    assert summary["steady_sound_ms"] > 2500 and summary["not_speech_ms"] == 0 and summary["hold"]["count"] == 1
    sounds.not_speech(1, 0, n, loudness_dbfs=-20.0)
    sounds.apply()
    assert not sounds.gates[1].unspoken  # one answer is not enough
    sounds.not_speech(1, 0, n, loudness_dbfs=-60.0)
    sounds.apply()
    assert not sounds.gates[1].unspoken  # a faint window (bleed, near silence) does not count
    sounds.not_speech(1, 0, n, loudness_dbfs=-20.0)
    assert not sounds.gates[1].unspoken and sounds.answers == 1  # answers take effect when applied
    speech_frames = sounds._marks[1].count(0, n)[0]
    sounds.apply()
    assert sounds.gates[1].unspoken and sounds.answers == 0
    # The frames those windows covered counted as speech until the latch: they are taken back, once.
    assert speech_frames > 50 and sounds.take_retracted() == [0, speech_frames] and sounds.take_retracted() == [0, 0]
    assert sounds._marks[1].count(0, n)[0] == 0 and sounds.latched(1, 0, n)
    assert sounds.summary(1)["not_speech_ms"] == speech_frames * 20
    kept, _, _ = sounds.separate([tone[: n * frame], speech[: n * frame]], flags)
    sounds.mark(kept)
    assert not kept[:, 1].any() and sounds.latched(1, n, 2 * n) and sounds.summary(1)["not_speech_ms"] > 1000
    sounds.heard(1)
    sounds.apply()
    assert sounds.gates[1].unspoken  # one window heard as speech among music is not enough
    sounds.heard(1)
    sounds.apply()
    assert not sounds.gates[1].unspoken
    for _ in range(2):
        sounds.not_speech(1, 0, n, loudness_dbfs=-20.0)
    sounds.heard(1, answered=False)
    sounds.apply()
    assert not sounds.gates[1].unspoken  # no answer (a window dropped or failed): a voice counts as speech


def test_a_release_by_speech_gives_back_what_the_latch_took_of_the_speakers_first_words():
    """Two speech answers in a row release a latched channel and give back to speech the latched frames from the first
    of those windows on that would have counted as speech (not those that would not, nor those before it); they leave
    not_speech_ms and the hold, which stays a hold only while long enough without them."""
    from service.analytics.sound import ChannelSounds

    frame = RATE // 50
    speech = np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)
    speech = np.pad(speech, (0, 4 * RATE - len(speech)))[: 4 * RATE]
    flags = vad(speech)[:, None]
    n = len(flags)
    sounds = ChannelSounds(1, frame, 20, hold_min_ms=1000, history_frames=1000)
    kept, _, _ = sounds.separate([speech[: n * frame]], flags)
    sounds.mark(kept)
    for _ in range(2):
        sounds.not_speech(0, 0, n, loudness_dbfs=-20.0)
    sounds.apply()
    taken = sounds.take_retracted()[0]
    assert sounds.gates[0].unspoken and taken > 50
    kept, _, _ = sounds.separate([speech[: n * frame]], flags)
    latched = sounds.last_latched
    assert not kept.any() and latched is not None and np.array_equal(latched, flags)
    would = latched.copy()
    would[: n // 4] = False  # as if the first of them were the other side's bleed
    sounds.mark(kept, would)
    hold = sounds.summary(0)["hold"]
    assert hold["count"] == 1 and hold["ms"] >= n * 20  # the latched block is a hold so far
    not_speech = sounds.summary(0)["not_speech_ms"]
    sounds.heard(0, first=n + n // 8)
    sounds.apply()
    assert sounds.gates[0].unspoken and sounds.take_restored() == [0]  # one speech answer is not enough
    sounds.heard(0, first=n + n // 2)
    sounds.apply()
    expected = int(np.count_nonzero(would[n // 8 :]))
    assert not sounds.gates[0].unspoken and sounds.take_restored() == [expected] and sounds.take_restored() == [0]
    assert expected > 50 and sounds._marks[0].count(n, 2 * n)[0] == expected  # speech again, for the windows over them
    assert sounds.summary(0)["not_speech_ms"] == not_speech - expected * 20
    hold = sounds.summary(0)["hold"]  # the latched stretch less its last 7/8 (3.5 s): 0.5 s, no hold
    assert hold == {"ms": 0, "count": 0}


def test_a_gate_released_by_speech_keeps_a_hold_that_is_long_enough_without_the_speech():
    """SteadyGate.give_back takes the given frames off the end of a latched stretch: a hold still long enough keeps its
    count and loses their time; a negative count is refused."""
    gate = SteadyGate(FRAME, hold_min_ms=1000)
    gate.hear(speech=False)
    x = signals.int16(np.random.default_rng(1).normal(0, 3000, 3 * RATE))
    gate.push(x, len(x) // FRAME)
    assert gate.holds == 1 and gate.hold_frames == 150
    gate.give_back(50)
    assert not gate.unspoken and gate.holds == 1 and gate.hold_frames == 100 and gate.hold_ms == 0
    with pytest.raises(ValueError, match="negative"):
        gate.give_back(-1)


def flat_notes(seconds: float, seed: int = 5) -> np.ndarray:
    """Fast notes (60-90 ms each, harmonic) at one loudness, one after another: each 80 ms block sounds unlike the last,
    so the gate cannot hold it, but its level hardly moves (loudness-compressed hold music)."""
    return signals.fast_notes(seconds, seed, shortest_s=0.06, decay_per_s=0.0)


async def test_fast_music_at_one_loudness_on_a_channel_that_played_music_is_not_scored():
    """On a channel whose gate held music in the last 30 s, fast notes at one loudness that the gate cannot hold are not
    sent to the model (their level moves less than 10 dB in a second; speech's moves about 36), the customer's speech
    after them still alerts; the same notes on a channel that played no music before are scored."""
    notes = flat_notes(8.0)
    speech = np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)
    call = np.concatenate([signals.int16(np.concatenate([signals.music(6.0), notes, np.zeros(RATE // 2)])), speech])[:, None]
    alerts, updates, summary = await run_session(call, rules_text=ANGRY_RULE)
    notes_end_ms = 14_000
    assert not [u for u in updates if u.window_end_ms <= notes_end_ms], [u.window_end_ms for u in updates]
    assert [a.rule_id for a in alerts] == ["angry"] and summary.document["speakers"][0]["windows_skipped"] > 10
    _, alone, _ = await run_session(signals.int16(np.concatenate([notes, np.zeros(RATE // 2)]))[:, None], rules_text=ANGRY_RULE)
    assert len(alone) > 10  # not suspected of music: scored (a speech check would decide)


LOUD_AGENT_RULE = """rules:
  - id: agent-loud
    speaker: agent
    loudness_over_baseline_db: {ge: 8, for: 1s, warmup: 5s}
    severity: low
    notify: [supervisor]
    cooldown: 60s
    message: agent loud
"""


async def test_music_taken_for_music_shows_no_loudness_to_the_rules_on_an_unscored_channel():
    """On the agent's channel (not scored), loud fast notes at one loudness after steady music are music by the level
    test, so a rule on the agent's loudness over their baseline does not fire on them; the same notes after speech alone
    (no music before: nothing suspects them) do fire it, so the rule would see them."""
    speech = np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)
    voice = np.concatenate([speech] * 3)  # about 10 s of the agent's speech: their loudness baseline
    level = np.sqrt(np.mean(voice[np.abs(voice) > 300].astype(np.float64) ** 2))
    notes = flat_notes(8.0)
    notes = notes / np.sqrt(np.mean(notes[np.abs(notes) > 0.01 * np.abs(notes).max()] ** 2)) * level * 10 ** (14 / 20)

    def call(*parts: np.ndarray) -> np.ndarray:
        agent = np.concatenate([np.asarray(p, np.float64) for p in parts] + [np.zeros(RATE // 2)])
        agent = np.clip(np.round(agent), -32768, 32767).astype(np.int16)
        return np.stack([np.zeros(len(agent), np.int16), agent], axis=1)

    roles = (Role.CUSTOMER, Role.AGENT)
    music = signals.int16(signals.music(6.0)).astype(np.float64) * 4
    alerts, _, _ = await run_session(call(voice, music, notes), rules_text=LOUD_AGENT_RULE, roles=roles)
    assert [a.rule_id for a in alerts] == []
    alerts, _, _ = await run_session(call(voice, notes), rules_text=LOUD_AGENT_RULE, roles=roles)
    assert [a.rule_id for a in alerts] == ["agent-loud"]


def test_the_answers_about_a_channel_take_effect_in_the_order_of_its_audio():
    """Answers applied together take effect in the order of their windows' audio, whatever order they came in (the
    level test answers when a window is cut, the check when the engine has run it): a not-speech answer that came
    between two speech answers but is about an earlier window does not break them: they release the latch."""
    from service.analytics.sound import ChannelSounds

    frame = RATE // 50
    speech = np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)[: 2 * RATE]
    flags = vad(speech)[:, None]
    n = len(flags)
    sounds = ChannelSounds(1, frame, 20, hold_min_ms=1000, history_frames=1000)
    sounds.mark(sounds.separate([speech[: n * frame]], flags)[0])
    for _ in range(2):
        sounds.not_speech(0, 0, n, loudness_dbfs=-20.0)
    sounds.apply()
    assert sounds.gates[0].unspoken
    sounds.heard(0, first=n // 2)
    sounds.not_speech(0, n // 4, n // 2, loudness_dbfs=-20.0)  # came second, about the earliest audio
    sounds.heard(0, first=3 * n // 4)
    sounds.apply()
    assert not sounds.gates[0].unspoken
