"""The engine's speech check: silero-vad (real, its weights from its wheel) keeps windows of fast music and noise bursts
that pass webrtcvad and the steady-sound gate away from the emotion model, in process and over the engine's IPC, and
carries each channel's detector state from one of its windows to the next."""

import asyncio

import numpy as np
import pytest
import soxr

from clients import signals
from service.analytics.gate import SteadyGate
from service.config import AnalyticsConfig
from service.domain import Role
from service.errors import ConfigError
from service.inference.base import NotSpeech, Spoken, StreamSpan, WindowScores
from service.inference.speech import CHUNK, HISTORY_CHUNKS, SPEECH_PROBABILITY, SpeechCheckedModel, SpeechDetector
from tests.fakes import FakeEmotionModel, one_hot
from tests.test_analytics_pipeline import RATE, run_session, scripted_model, speech_8k
from tests.test_gate import ANGRY_RULE, vad


def arpeggio(seconds: float, seed: int = 3) -> np.ndarray:
    """Fast notes (50-90 ms each, harmonic, decaying): each 80 ms block sounds unlike the last, so the steady-sound
    gate cannot tell it from speech."""
    return signals.fast_notes(seconds, seed)


def noise_bursts(seconds: float, seed: int = 3) -> np.ndarray:
    """White noise swelling four times a second."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    return rng.normal(0, 1, n) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / RATE) ** 2) * 3000


def windows_16k(x: np.ndarray) -> list[np.ndarray]:
    """1 s windows every 0.5 s of 8 kHz int16 audio, at 16 kHz float as the engine gets them."""
    y = soxr.resample(x.astype(np.float32) / 32768, RATE, 16000)
    return [y[i:i + 16000] for i in range(0, len(y) - 16000 + 1, 8000)]


@pytest.fixture(scope="module")
def detector():
    return SpeechDetector()


@pytest.mark.parametrize("name", ["arpeggio", "noise bursts"])
def test_fast_music_and_noise_pass_webrtcvad_and_the_gate_but_not_the_speech_detector(detector, name):
    """Ten seconds of fast notes or of swelling noise are voiced in almost every frame by webrtcvad and not steady to
    the gate, yet silero-vad finds under 30% speech in every 1 s window; the speech fixture's windows are 60% or more."""
    x = signals.int16({"arpeggio": arpeggio, "noise bursts": noise_bursts}[name](10.0))
    voiced = vad(x)
    steady = SteadyGate(RATE // 50).push(x, len(voiced))
    assert np.count_nonzero(voiced & ~steady) >= 0.9 * len(voiced)
    assert max(detector.speech_shares(windows_16k(x))) < 0.3
    speech = np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)
    assert min(detector.speech_shares(windows_16k(speech))) >= 0.6


def test_the_checked_model_scores_only_the_speech_windows(detector):
    """A batch of a speech window and a music window: the music one is answered NotSpeech and never reaches the model,
    the speech one gets the model's scores, in the batch's order; windows sent to be checked only are answered Spoken
    or NotSpeech and never scored."""
    seen = []

    def script(audio: np.ndarray) -> np.ndarray:
        seen.append(len(audio))
        return one_hot("angry")

    checked = SpeechCheckedModel(FakeEmotionModel(script), detector, min_share=0.5)
    speech = windows_16k(np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16))[0]
    music = windows_16k(signals.int16(arpeggio(2.0)))[0]
    results = checked.score_batch([music, speech, music[:100]])
    assert isinstance(results[0], NotSpeech) and results[0].speech < 0.3
    assert isinstance(results[1], WindowScores) and isinstance(results[2], NotSpeech) and results[2].speech == 0.0
    assert seen == [len(speech)]
    only = checked.score_spans([speech, music], [StreamSpan("a", 0, check_only=True), StreamSpan("b", 0, check_only=True)])
    assert isinstance(only[0], Spoken) and only[0].speech >= 0.5 and isinstance(only[1], NotSpeech)
    assert seen == [len(speech)]  # a window sent to be checked only never reaches the model
    with pytest.raises(ValueError, match="min_share"):
        SpeechCheckedModel(FakeEmotionModel(script), detector, min_share=0.0)


async def test_fast_music_on_the_customer_channel_raises_no_alert_behind_the_check_and_speech_still_does(detector):
    """Fast music the scripted model would call angry: without the check its windows are scored and alert; with the
    check none is scored (not speech, or music once the channel is latched) and there is no alert, and the customer's
    speech after it still alerts."""
    music = signals.int16(np.concatenate([arpeggio(12.0), np.zeros(RATE)]))[:, None]
    alerts, updates, _ = await run_session(music, rules_text=ANGRY_RULE)
    assert updates and [a.rule_id for a in alerts] == ["angry"]  # what the check is for
    checked = SpeechCheckedModel(scripted_model(), detector, min_share=0.5)
    alerts, updates, summary = await run_session(music, rules_text=ANGRY_RULE, model=checked)
    customer = summary.document["speakers"][0]
    assert alerts == [] and updates == [] and customer["windows_scored"] == 0
    # Two not-speech answers latch the channel; from then on it is suspect of music, and the notes' windows, whose level
    # holds within 10 dB, are skipped as music before they reach the check.
    assert customer["windows_not_speech"] >= 2 and customer["windows_skipped"] > 10
    then_speech = np.concatenate([music[:, 0], np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)])[:, None]
    alerts, updates, summary = await run_session(then_speech, rules_text=ANGRY_RULE,
                                                 model=SpeechCheckedModel(scripted_model(), detector, min_share=0.5))
    assert [a.rule_id for a in alerts] == ["angry"] and updates
    assert all(u.window_end_ms > len(music) * 1000 // RATE for u in updates)


async def test_a_window_that_is_not_speech_comes_back_over_the_engine_ipc_as_not_speech(detector, tmp_path):
    """Through the engine's ZeroMQ link, a music window is answered NotSpeech with its speech share and a speech window
    with scores, or Spoken (not scored) when it was sent to be checked only."""
    from tests.test_engine_ipc import engine_link

    checked = SpeechCheckedModel(scripted_model(), detector, min_share=0.5)
    async with engine_link(f"ipc://{tmp_path}/engine.sock", checked) as client:
        speech = windows_16k(np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16))[0]
        music = windows_16k(signals.int16(arpeggio(2.0)))[0]
        got_music, got_speech = await asyncio.gather(asyncio.wrap_future(client.submit(music)),
                                                     asyncio.wrap_future(client.submit(speech)))
        assert isinstance(got_music, NotSpeech) and 0.0 <= got_music.speech < 0.3
        assert isinstance(got_speech, WindowScores) and got_speech.scores.shape == (len(client.labels),)
        only = [StreamSpan(7, 0, check_only=True), StreamSpan(8, 0, check_only=True)]
        checked_music, checked_speech = await asyncio.gather(asyncio.wrap_future(client.submit(music, span=only[0])),
                                                             asyncio.wrap_future(client.submit(speech, span=only[1])))
        assert isinstance(checked_music, NotSpeech) and isinstance(checked_speech, Spoken) and checked_speech.speech >= 0.5


def test_the_speech_check_is_configured_by_its_share_and_wraps_the_loaded_model():
    """CALLPULSE_SPEECH_CHECK sets the minimum speech share (0.2 by default; 0 loads the model unchecked), a value outside
    0..1 is refused naming the setting, and a positive one puts the loaded model behind the check."""
    from service.config import load_config
    from service.errors import ConfigError
    from service.inference.loading import load_emotion_model

    assert load_config({}, environ={}).inference.speech_check == 0.2
    with pytest.raises(ConfigError, match="speech_check must be 0"):
        load_config({}, environ={"CALLPULSE_SPEECH_CHECK": "1.5"})
    unchecked = load_emotion_model(load_config({"model": "builtin:constant"}, environ={"CALLPULSE_SPEECH_CHECK": "0"}))
    assert not isinstance(unchecked, SpeechCheckedModel)
    checked = load_emotion_model(load_config({"model": "builtin:constant"}, environ={"CALLPULSE_SPEECH_CHECK": "0.4"}))
    assert isinstance(checked, SpeechCheckedModel) and checked.min_share == 0.4 and checked.labels == unchecked.labels
    assert checked.detector.refresh_samples == 0
    refreshed = load_emotion_model(load_config({"model": "builtin:constant"}, environ={"CALLPULSE_SPEECH_CHECK_REFRESH_MS": "3000"}))
    assert refreshed.detector.refresh_samples == 3 * 16000


def speech_16k() -> np.ndarray:
    """The speech fixture, louder, at 16 kHz float (what the engine gets)."""
    x = np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)
    return soxr.resample(x.astype(np.float32) / 32768, RATE, 16000).astype(np.float32)


def channel_windows(y: np.ndarray, stream, start: int = 0) -> list[tuple[np.ndarray, StreamSpan]]:
    """1 s windows every 0.5 s of a 16 kHz channel (a hop that is not a whole number of chunks), with their spans."""
    return [(y[i:i + 16000], StreamSpan(stream, start + i)) for i in range(0, len(y) - 16000 + 1, 8000)]


def whole_channel_shares(y: np.ndarray, windows) -> list[float]:
    """The shares silero-vad's own wrapper gives each window when it runs once over the whole channel, chunk by chunk."""
    import torch
    from silero_vad import load_silero_vad

    model = load_silero_vad(onnx=False)
    with torch.inference_mode():
        p = np.array([float(model(torch.from_numpy(y[i:i + CHUNK]), 16000)) for i in range(0, len(y) - CHUNK + 1, CHUNK)])
    shares = []
    for audio, span in windows:
        first, last = -(-span.start // CHUNK), (span.start + len(audio) - CHUNK) // CHUNK
        shares.append(float(np.mean(p[first:last + 1] >= SPEECH_PROBABILITY)))
    return shares


def test_a_channel_checked_window_by_window_reads_as_one_run_over_the_whole_channel():
    """Overlapping 1 s windows of one channel, checked one after another with their spans, get exactly the shares that
    silero-vad gives when it runs over the whole channel (each window runs only its new chunks, from the state the
    channel's earlier windows left, never started afresh: refresh_s 0); the same windows without spans, each from a fresh
    state, read differently."""
    music = soxr.resample(signals.int16(arpeggio(3.0)).astype(np.float32) / 32768, RATE, 16000).astype(np.float32)
    y = np.concatenate([speech_16k(), music])
    windows = channel_windows(y, stream=7)
    detector = SpeechDetector(refresh_s=0.0)
    streamed = [detector.speech_shares([audio], [span])[0] for audio, span in windows]
    assert streamed == whole_channel_shares(y, windows)
    alone = [detector.speech_shares([audio])[0] for audio, _ in windows]
    assert alone != streamed
    assert detector.streams == 1


def test_a_channels_state_is_started_afresh_while_it_hears_speech_and_left_alone_on_music():
    """With a refresh every second, a channel of speech gets the answers of a state carried on for good until a second
    has run, and others after it (the state was started afresh while it heard speech); a channel of music it never
    heard as speech gets exactly the carried state's answers (a state that hears no speech is left as it is)."""
    speech = speech_16k()  # 3.5 s: every answer still kept
    music = soxr.resample(signals.int16(signals.music(4.0)).astype(np.float32) / 32768, RATE, 16000).astype(np.float32)
    answers = {}
    for refresh_s in (1.0, 0.0):
        detector = SpeechDetector(refresh_s=refresh_s)
        for stream, audio in (("speech", speech), ("music", music)):
            for window, span in channel_windows(audio, stream):
                detector.speech_shares([window], [span])
            answers[stream, refresh_s] = dict(detector.recent_answers(stream))
    assert max(p for p in answers["music", 0.0].values()) < SPEECH_PROBABILITY
    assert answers["music", 1.0] == answers["music", 0.0]
    refreshed, carried = answers["speech", 1.0], answers["speech", 0.0]
    assert refreshed.keys() == carried.keys() and min(refreshed) == 0 and len(refreshed) < HISTORY_CHUNKS
    assert all(refreshed[at] == carried[at] for at in refreshed if at < 16000)
    assert any(refreshed[at] != carried[at] for at in refreshed if at >= 16000)
    assert SpeechDetector().recent_answers("never seen") == []


def test_the_speech_checks_refresh_is_configured_and_refused_below_zero():
    """CALLPULSE_SPEECH_CHECK_REFRESH_MS sets how often the check starts a channel's state afresh (0 by default:
    never); a negative value is refused by name, and so is a negative refresh given to the detector."""
    from service.config import load_config

    assert load_config(environ={}).inference.speech_check_refresh_ms == 0
    assert load_config(environ={"CALLPULSE_SPEECH_CHECK_REFRESH_MS": "3000"}).inference.speech_check_refresh_ms == 3000
    with pytest.raises(ConfigError, match="speech_check_refresh_ms"):
        load_config(environ={"CALLPULSE_SPEECH_CHECK_REFRESH_MS": "-5"})
    with pytest.raises(ValueError, match="refresh_s"):
        SpeechDetector(refresh_s=-1.0)


def test_channels_batched_together_keep_their_own_state():
    """Two channels' windows interleaved in shared batches, and a channel's two consecutive windows in one batch, get
    the shares each channel gets checked on its own, one window at a time (there with the whole network run chunk by
    chunk, here with only its recurrent cell run chunk by chunk)."""
    speech = speech_16k()
    music = soxr.resample(signals.int16(arpeggio(4.0)).astype(np.float32) / 32768, RATE, 16000).astype(np.float32)
    a, b = channel_windows(speech, "a"), channel_windows(music, "b")
    alone = SpeechDetector(split=False)
    expected_a = [alone.speech_shares([w], [s])[0] for w, s in a]
    expected_b = [alone.speech_shares([w], [s])[0] for w, s in b]
    together = SpeechDetector()
    assert together.split and not alone.split
    got_a, got_b = [], []
    for k in range(0, max(len(a), len(b)), 2):
        batch = a[k:k + 2] + b[k:k + 2]  # two windows of each channel in one batch
        shares = together.speech_shares([w for w, _ in batch], [s for _, s in batch])
        got_a += shares[:len(a[k:k + 2])]
        got_b += shares[len(a[k:k + 2]):]
    assert got_a == expected_a and got_b == expected_b
    assert min(got_a[1:]) >= 0.6 and max(got_b) < 0.3


def test_a_channel_that_skips_audio_goes_on_from_its_state_and_old_channels_are_forgotten():
    """A window after a stretch no window carried runs from its own start (its share is read over its own chunks
    only); past `max_streams` the least recently used channel is forgotten, and every channel idle for `idle_s`."""
    y = speech_16k()
    detector = SpeechDetector(max_streams=2)
    first, later = y[:16000], y[24000:40000]
    detector.speech_shares([first], [StreamSpan(1, 0)])
    share = detector.speech_shares([later], [StreamSpan(1, 24000)])[0]
    assert 0.0 <= share <= 1.0 and detector.streams == 1
    detector.speech_shares([first, first], [StreamSpan(2, 0), StreamSpan(3, 0)])
    assert detector.streams == 2
    fresh = SpeechDetector().speech_shares([later], [StreamSpan(9, 24000)])[0]
    assert detector.speech_shares([later], [StreamSpan(1, 24000)])[0] == fresh  # channel 1 was forgotten: a fresh start
    idle = SpeechDetector(idle_s=0.0)
    idle.speech_shares([first], [StreamSpan(1, 0)])
    assert idle.streams == 0
    with pytest.raises(ValueError, match="2 spans for 1 windows"):
        detector.speech_shares([first], [StreamSpan(1, 0), StreamSpan(2, 0)])


class SpanRecordingModel(FakeEmotionModel):
    """FAKE model that records the spans its windows came with."""

    def __init__(self):
        super().__init__()
        self.spans: list[tuple[StreamSpan | None, int]] = []

    def score_spans(self, windows, spans):
        self.spans.extend(zip(spans, (len(w) for w in windows)))
        return self.score_batch(windows)


async def test_a_session_names_each_channel_and_where_its_windows_lie_at_16_khz():
    """A stereo call's windows reach the model with one stream per channel (new ones for the next call) and starts in
    16 kHz samples since the call began: speech placed 3 s in starts within a VAD hangover of 48000."""
    speech = np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)
    silence = np.zeros(3 * RATE, np.int16)
    left = np.concatenate([silence, speech, np.zeros(RATE, np.int16)])
    right = np.zeros(len(left), np.int16)
    right[: len(speech)] = speech
    stereo = np.stack([left, right], axis=1)
    model = SpanRecordingModel()
    roles = (Role.CUSTOMER, Role.AGENT)
    await run_session(stereo, roles=roles, score_roles=roles, model=model)
    streams = {span.stream for span, _ in model.spans}
    assert len(streams) == 2 and all(isinstance(s, int) for s in streams)
    by_stream = {s: sorted(span.start for span, _ in model.spans if span.stream == s) for s in streams}
    starts = sorted(by_stream.values(), key=lambda v: v[0])
    assert starts[0][0] < 8000 and 48000 - 8000 <= starts[1][0] <= 48000 + 800
    assert all(span.start + n <= 2 * len(stereo) for span, n in model.spans)
    again = SpanRecordingModel()
    await run_session(stereo, roles=roles, score_roles=roles, model=again)
    assert not streams & {span.stream for span, _ in again.spans}


async def test_the_engine_names_a_workers_stream_by_the_worker_and_its_id(tmp_path):
    """A window's span crosses the engine's ZeroMQ link: the model sees the worker's stream id paired with the worker's
    connection and the same start; a window without a span arrives without one, and a stream that is not an int is
    refused before it is sent."""
    from tests.test_engine_ipc import engine_link

    model = SpanRecordingModel()
    async with engine_link(f"ipc://{tmp_path}/engine.sock", model) as client:
        audio = np.zeros(16000, np.float32)
        await asyncio.wrap_future(client.submit(audio, span=StreamSpan(5, 1234)))
        await asyncio.wrap_future(client.submit(audio))
        (span, _), (none, _) = model.spans
        assert none is None and span.start == 1234
        identity, stream = span.stream
        assert isinstance(identity, bytes) and identity and stream == 5
        with pytest.raises(TypeError, match="must be an int"):
            client.submit(audio, span=StreamSpan("call-1/customer", 0))


def test_the_signal_evaluation_counts_the_windows_the_check_holds_back(tmp_path):
    """clients.eval_signal runs clips as calls without and with the check: fast music's windows reach the emotion model
    and count as talk without it and neither (but for its first two seconds) with it, while at least nine in ten of the
    bundled stereo call's windows still do and its talk time stays within a second."""
    from clients.eval_signal import ROOT, _mono8k, windows_to_the_model

    call = np.stack(_mono8k(str(ROOT / "clients" / "samples" / "call_stereo_8k.wav")), axis=1)
    result = windows_to_the_model({"music": [("arpeggio", signals.int16(arpeggio(10.0)))], "speech": [("call", call)]},
                                  str(tmp_path), 0.2)
    music, speech = result["classes"]["music"], result["classes"]["speech"]
    assert music["scored_without_check"] >= 10 and music["scored_with_check"] == 0
    assert music["not_speech"] >= 2  # the check's answers latch the channel; its level-steady windows then skip the check
    assert speech["scored_without_check"] >= 10 and speech["scored_with_check"] >= 0.9 * speech["scored_without_check"]
    # A replay applies the check's answers at fixed points of its audio (REPLAY_SYNC_MS, 2 s) until a channel is
    # unsettled: music the gate never catches counts until the first of them.
    assert music["talk_s_without_check"] >= 9 and music["talk_s_with_check"] <= 2.5
    assert abs(speech["talk_s_with_check"] - speech["talk_s_without_check"]) <= 1 and speech["talk_s_with_check"] >= 5


def test_a_not_speech_verdict_latches_the_channel_until_speech_quiet_or_a_gap():
    """hear(speech=False) makes every later frame of loud unsteady sound part of the steady state (and of a hold), marked
    as the latch's; hear(speech=True), 2 s of quiet and a stretch without audio each release it."""
    frame = RATE // 50
    music = signals.int16(arpeggio(8.0))
    gate = SteadyGate(frame, 20, hold_min_ms=5000)
    assert not gate.push(music[:2 * RATE], 100).any()  # the gate itself does not take fast notes for steady sound
    gate.hear(speech=False)
    state = gate.push(music[2 * RATE:8 * RATE], 300)
    assert gate.unspoken and state.all() and gate.last_unspoken.all()
    assert gate.holds == 1 and gate.hold_frames == 300
    gate.hear(speech=True)
    assert not gate.push(music[:RATE], 50).any() and not gate.last_unspoken.any()
    gate.hear(speech=False)
    quiet = np.zeros(3 * RATE, np.int16)
    state = gate.push(quiet, 150)
    assert not gate.unspoken and not state[-20:].any()  # released after 25 quiet blocks
    gate.hear(speech=False)
    gate.skip(10)
    assert not gate.unspoken and not gate.push(music[:RATE], 50).any()


async def test_music_the_check_finds_latches_the_channel_out_of_talk_time_and_speech_after_it_counts(detector):
    """Fast music that webrtcvad and the gate take for speech counts as 12 s of talk without the check; with it the
    channel is latched as not speech after the first verdicts and the music before them is taken back (the music counts
    as not_speech_ms and as a hold, not as talk), and the customer's speech after the music is still talk (the words the
    latch held until the check heard speech twice given back) and still alerts."""
    music = signals.int16(np.concatenate([arpeggio(12.0), np.zeros(RATE // 2)]))
    speech = np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)
    call = np.concatenate([music, speech])[:, None]
    _, _, plain = await run_session(call, rules_text=ANGRY_RULE)
    _, _, alone = await run_session(speech[:, None], rules_text=ANGRY_RULE)
    alerts, updates, summary = await run_session(call, rules_text=ANGRY_RULE,
                                                 model=SpeechCheckedModel(scripted_model(), detector, min_share=0.5))
    talk = lambda s: s.document["conversation"]["talk_ms"]["customer"]  # noqa: E731
    customer = summary.document["speakers"][0]
    assert talk(plain) > talk(alone) + 10_000  # the music counted as talk
    assert talk(summary) < talk(alone) + 500  # the music before the latch took effect is taken back too
    assert talk(summary) > talk(alone) - 300  # the speech after it counts, its first words given back by the release
    assert customer["not_speech_ms"] >= 8_000 and customer["steady_sound_ms"] < 1_000
    assert customer["hold"]["count"] == 1 and 5_000 <= summary.document["conversation"]["hold"]["ms"] <= 12_000
    assert [a.rule_id for a in alerts] == ["angry"]
    assert all(u.window_end_ms > len(music) * 1000 // RATE for u in updates)


async def test_hold_music_on_the_unscored_agent_channel_is_checked_and_neither_talks_over_nor_interrupts(detector):
    """Hold music on the agent's channel (not scored) whose fast passages the gate misses: without the check they count
    as the agent talking over the customer and interrupting; with it the suspect channel's windows go to the check
    only, which latches it: no over-talk, no interruption, one unbroken hold, and the customer's speech still alerts."""
    speech = np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)
    agent = signals.int16(np.concatenate([signals.music(4.0), arpeggio(10.0), signals.music(2.0), arpeggio(6.0), np.zeros(RATE)]))
    customer = np.zeros(len(agent), np.int16)
    for at in (6, 15):
        customer[at * RATE:at * RATE + len(speech)] = speech
    call = np.stack([customer, agent], axis=1)
    roles = (Role.CUSTOMER, Role.AGENT)
    _, _, plain = await run_session(call, rules_text=ANGRY_RULE, roles=roles)
    assert plain.document["conversation"]["talk_ms"]["agent"] > 10_000 and plain.document["conversation"]["overtalk_ms"] > 2_000
    assert plain.document["conversation"]["hold"]["count"] != 1
    alerts, _, summary = await run_session(call, rules_text=ANGRY_RULE, roles=roles,
                                           model=SpeechCheckedModel(scripted_model(), detector, min_share=0.2))
    conversation, agent_summary = summary.document["conversation"], summary.document["speakers"][1]
    assert conversation["talk_ms"]["agent"] < 700 and conversation["talk_ms"]["customer"] == plain.document["conversation"]["talk_ms"]["customer"]
    assert conversation["overtalk_ms"] == 0 and conversation["interruptions"]["count"] == 0
    assert conversation["hold"]["count"] == 1 and conversation["hold"]["ms"] >= 15_000
    # The check's answers, and once the channel is suspect the level test's (music holding its loudness), latch it.
    assert agent_summary["not_speech_ms"] >= 10_000 and agent_summary["windows_not_speech"] >= 1 and agent_summary["windows_scored"] == 0
    assert [a.rule_id for a in alerts] == ["angry"]


async def test_music_the_gate_never_catches_on_the_agent_channel_is_checked_only_when_every_window_is(detector):
    """Fast notes alone on the unscored agent channel never make it suspect: with check_unscored "suspect" they count as
    the agent's talk, with "all" the agent's windows go to the check and the channel is latched out of talk; "none"
    and a bad value behave as stated."""
    notes = signals.int16(np.concatenate([arpeggio(12.0), np.zeros(RATE)]))
    call = np.stack([np.zeros(len(notes), np.int16), notes], axis=1)
    roles, talk = (Role.CUSTOMER, Role.AGENT), {}
    for mode in ("suspect", "all", "none"):
        _, _, summary = await run_session(call, roles=roles, analytics=AnalyticsConfig(check_unscored=mode),
                                          model=SpeechCheckedModel(scripted_model(), detector, min_share=0.2))
        agent = summary.document["speakers"][1]
        talk[mode] = (summary.document["conversation"]["talk_ms"]["agent"], agent["windows_not_speech"], agent["not_speech_ms"])
    assert talk["suspect"][0] > 10_000 and talk["suspect"][1] == 0
    # Two of the check's answers latch it (its first windows taken back too); then the level test answers for most.
    assert talk["all"][0] < 200 and talk["all"][1] >= 2 and talk["all"][2] > 11_000
    assert talk["none"] == talk["suspect"]
    with pytest.raises(ConfigError, match="check_unscored must be suspect, all or none"):
        AnalyticsConfig(check_unscored="sometimes")


def test_the_signal_evaluation_puts_music_on_the_agent_channel_while_the_customer_speaks(tmp_path):
    """clients.eval_signal's hold-music calls: steady chords with fast passages on the unscored agent channel while the
    customer speaks count as the agent's talk and over-talk without the check, far less with it, and least when every
    agent window is checked."""
    from clients.eval_signal import hold_music_calls

    music = signals.int16(np.concatenate([signals.music(4.0), arpeggio(10.0), signals.music(2.0), arpeggio(9.0)]))
    result = hold_music_calls([("chords and fast notes", music)], str(tmp_path), 0.2)
    assert result["calls"] == 1
    without, suspect, every = (result["settings"][key] for key in
                               ("without the check", "check 0.2, unscored: suspect", "check 0.2, unscored: all"))
    assert without["agent_talk_s"] > 15 and without["overtalk_s"] > 2
    assert suspect["agent_talk_s"] < 0.2 * without["agent_talk_s"] and suspect["overtalk_s"] < without["overtalk_s"]
    assert every["agent_talk_s"] <= suspect["agent_talk_s"] and every["hold_s"] >= 15
    assert all(isinstance(figures["alerts"], dict) for figures in result["settings"].values())


class FakeFailingDetector(SpeechDetector):
    """FAKE speech detector whose every batch fails (a broken detector, which a real one cannot be made into here)."""

    def __init__(self):  # noqa: D107 - loads nothing: it never detects
        pass

    def speech_shares(self, windows, spans=None):
        raise RuntimeError("detector down")


def test_a_failing_detector_leaves_scored_windows_scored_and_fails_only_the_windows_sent_to_be_checked():
    """When the detector fails a batch, the windows to be scored are scored unchecked, in order, and each window sent
    only to be checked gets the detector's error."""
    checked = SpeechCheckedModel(scripted_model(), FakeFailingDetector(), min_share=0.2)
    speech = windows_16k(np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16))[0]
    results = checked.score_spans([speech, speech, speech], [StreamSpan(1, 0), StreamSpan(2, 0, check_only=True), None])
    assert isinstance(results[0], WindowScores) and isinstance(results[2], WindowScores)
    assert isinstance(results[1], RuntimeError) and "detector down" in str(results[1])
    assert all(isinstance(r, WindowScores) for r in checked.score_batch([speech, speech]))


def test_the_signal_evaluation_counts_the_alerts_music_raises_with_an_always_angry_model(tmp_path):
    """clients.eval_signal's music alerts: fast notes on the scored customer channel, every window called angry, raise
    the anger-alone rule without the check and nothing with it (fewer windows scored too)."""
    from clients.eval_signal import music_alerts

    result = music_alerts([("fast notes", signals.int16(arpeggio(20.0)))], str(tmp_path), 0.2)
    settings = result["settings"]
    assert result["calls"] == 1
    assert settings["anger for 5 s alone, without the check"]["alerts"] == {"customer-angry-5s": 1}
    assert settings["anger for 5 s alone, check 0.2"]["clips_with_alerts"] == 0
    assert settings["default rules, check 0.2"]["alerts"] == {}
    assert settings["anger for 5 s alone, check 0.2"]["windows_scored"] < settings["anger for 5 s alone, without the check"]["windows_scored"]


def test_the_signal_evaluation_counts_the_alerts_of_music_louder_than_the_customers_speech_before_it(tmp_path, monkeypatch):
    """clients.eval_signal's music after speech: fast notes 10 dB over the customer's own speech before them pass the
    gate as speech and raise the shipped loudness rule without the check; the check holds most of them back (fewer
    windows scored, less talk), though not their first seconds, which it still hears as the speech before them."""
    from clients import eval_signal

    monkeypatch.setattr(eval_signal, "REAL_CALL", tmp_path / "absent.wav")  # the bundled call's customer, as in a fresh clone
    result = eval_signal.music_after_speech_alerts([("fast notes", signals.int16(arpeggio(20.0)))], str(tmp_path), 0.2)
    settings = result["settings"]
    assert result["calls"] == 1 and result["gain_db"] == 10.0
    assert settings["without the check"]["alerts"].get("customer-raised-voice") == 1
    assert settings["check 0.2"]["windows_scored"] < 0.6 * settings["without the check"]["windows_scored"]
    assert settings["check 0.2"]["talk_s"] < settings["without the check"]["talk_s"] - 10


async def test_music_at_one_loudness_is_latched_by_the_level_test_where_the_check_hears_speech(detector):
    """A speech check that hears speech in nearly everything (any chunk above 0.5) stands for silero-vad misreading music: fast notes at
    one loudness after steady music, on the customer's channel, are then not scored (the level test), and its answers
    latch the channel, so the notes count as not speech rather than talk; the speech after them still alerts and counts."""
    from tests.test_gate import flat_notes

    speech = np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)
    call = np.concatenate([signals.int16(np.concatenate([signals.music(6.0), flat_notes(8.0), np.zeros(RATE // 2)])), speech])[:, None]
    hears_all = SpeechCheckedModel(scripted_model(), detector, min_share=1e-9)
    alerts, updates, summary = await run_session(call, rules_text=ANGRY_RULE, model=hears_all)
    _, _, alone = await run_session(speech[:, None], rules_text=ANGRY_RULE)
    talk = lambda s: s.document["conversation"]["talk_ms"]["customer"]  # noqa: E731
    customer = summary.document["speakers"][0]
    assert not [u for u in updates if u.window_end_ms <= 14_000] and [a.rule_id for a in alerts] == ["angry"]
    assert customer["not_speech_ms"] >= 5_000 and talk(summary) < talk(alone) + 1_000
    assert talk(summary) > talk(alone) - 300
