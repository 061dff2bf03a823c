"""The engine's speech check: silero-vad (real, its weights from its wheel) keeps windows of fast music and noise bursts
that pass webrtcvad and the steady-sound gate away from the emotion model, in process and over the engine's IPC."""

import asyncio

import numpy as np
import pytest
import soxr

from clients import signals
from service.analytics.gate import SteadyGate
from service.inference.base import NotSpeech, WindowScores
from service.inference.speech import SpeechCheckedModel, SpeechDetector
from tests.fakes import FakeEmotionModel, one_hot
from tests.test_analytics_pipeline import RATE, run_session, scripted_model, speech_8k
from tests.test_gate import ANGRY_RULE, vad


def arpeggio(seconds: float, seed: int = 3) -> np.ndarray:
    """Fast notes (50-90 ms each, harmonic, decaying): each 80 ms block sounds unlike the last, so the steady-sound
    gate cannot tell it from speech."""
    rng = np.random.default_rng(seed)
    out, pos, n = np.zeros(int(seconds * RATE)), 0, int(seconds * RATE)
    while pos < n:
        m = min(n - pos, int(rng.uniform(0.05, 0.09) * RATE))
        f = 220 * 2 ** (rng.integers(0, 24) / 12)
        t = np.arange(m) / RATE
        out[pos:pos + m] = sum(np.sin(2 * np.pi * f * k * t) / k for k in range(1, 6)) * np.exp(-t * 8)
        pos += m
    return out / np.abs(out).max() * 8000


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
    the speech one gets the model's scores, in the batch's order."""
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
    with pytest.raises(ValueError, match="min_share"):
        SpeechCheckedModel(FakeEmotionModel(script), detector, min_share=0.0)


async def test_fast_music_on_the_customer_channel_raises_no_alert_behind_the_check_and_speech_still_does(detector):
    """Fast music the scripted model would call angry: without the check its windows are scored and alert; with the
    check none is scored (all counted as not speech) and there is no alert, and the customer's speech after it still
    alerts."""
    music = signals.int16(np.concatenate([arpeggio(12.0), np.zeros(RATE)]))[:, None]
    alerts, updates, _ = await run_session(music, rules_text=ANGRY_RULE)
    assert updates and [a.rule_id for a in alerts] == ["angry"]  # what the check is for
    checked = SpeechCheckedModel(scripted_model(), detector, min_share=0.5)
    alerts, updates, summary = await run_session(music, rules_text=ANGRY_RULE, model=checked)
    customer = summary.document["speakers"][0]
    assert alerts == [] and updates == [] and customer["windows_scored"] == 0
    assert customer["windows_not_speech"] > 10 and customer["windows_skipped"] >= customer["windows_not_speech"]
    then_speech = np.concatenate([music[:, 0], np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16)])[:, None]
    alerts, updates, summary = await run_session(then_speech, rules_text=ANGRY_RULE,
                                                 model=SpeechCheckedModel(scripted_model(), detector, min_share=0.5))
    assert [a.rule_id for a in alerts] == ["angry"] and updates
    assert all(u.window_end_ms > len(music) * 1000 // RATE for u in updates)


async def test_a_window_that_is_not_speech_comes_back_over_the_engine_ipc_as_not_speech(detector, tmp_path):
    """Through the engine's ZeroMQ link, a music window is answered NotSpeech with its speech share and a speech window
    with scores."""
    from service.inference.remote import RemoteScoringClient
    from tests.test_engine_ipc import Engine

    endpoint = f"ipc://{tmp_path}/engine.sock"
    engine = Engine(endpoint, SpeechCheckedModel(scripted_model(), detector, min_share=0.5))
    client = RemoteScoringClient(endpoint, worker=0)
    await client.start()
    try:
        await client.wait_ready(10)
        speech = windows_16k(np.clip(speech_8k() * 3, -32768, 32767).astype(np.int16))[0]
        music = windows_16k(signals.int16(arpeggio(2.0)))[0]
        got_music, got_speech = await asyncio.gather(asyncio.wrap_future(client.submit(music)),
                                                     asyncio.wrap_future(client.submit(speech)))
        assert isinstance(got_music, NotSpeech) and 0.0 <= got_music.speech < 0.3
        assert isinstance(got_speech, WindowScores) and got_speech.scores.shape == (len(client.labels),)
    finally:
        await client.close()
        await engine.close()


def test_the_speech_check_is_configured_by_its_share_and_wraps_the_loaded_model():
    """CALLPULSE_SPEECH_CHECK sets the minimum speech share (0, the default, loads the model unchecked), a value outside
    0..1 is refused naming the setting, and a positive one puts the loaded model behind the check."""
    from service.config import load_config
    from service.errors import ConfigError
    from service.inference.loading import load_emotion_model

    assert load_config({}, environ={}).inference.speech_check == 0.0
    with pytest.raises(ConfigError, match="speech_check must be 0"):
        load_config({}, environ={"CALLPULSE_SPEECH_CHECK": "1.5"})
    unchecked = load_emotion_model(load_config({"model": "builtin:constant"}, environ={}))
    assert not isinstance(unchecked, SpeechCheckedModel)
    checked = load_emotion_model(load_config({"model": "builtin:constant"}, environ={"CALLPULSE_SPEECH_CHECK": "0.4"}))
    assert isinstance(checked, SpeechCheckedModel) and checked.min_share == 0.4 and checked.labels == unchecked.labels
