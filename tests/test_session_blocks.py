"""A CallSession analyses prosody and turn-taking on blocks of held frames with the same outputs as analysing every push."""

import asyncio
from dataclasses import asdict

import numpy as np
import pytest

from service.batch import MemorySink
from service.config import DEFAULT_RULES_PATH, AnalyticsConfig, IngestConfig, VadConfig, WindowConfig
from service.domain import Alert, AudioFormat, CallConfig, CallSummary, EmotionUpdate, Encoding, Role
from service.inference.batcher import InferenceBatcher
from service.inference.scoring import LocalScoringClient
from service.rules import RuleEngine, load_rules
from service import call_analytics
from service.session import CallSession, SessionContext
from tests.fakes import FakeEmotionModel, one_hot

RATE = 8000


def voice(seconds: float, f0: float, level: float, rng: np.random.Generator) -> np.ndarray:
    """A glottal-like pulse train with syllable-rate loudness changes (the VAD takes it for speech), in syllables of
    80-160 ms, each with its own gliding pitch and vowel colour (a steady buzz would be a steady sound, not speech)."""
    n = int(seconds * RATE)
    out = np.zeros(n)
    pos, phase = 0, 0.0
    taps = np.arange(40) / RATE
    while pos < n:
        m = min(n - pos, int(rng.uniform(0.08, 0.16) * RATE))
        pitch = np.linspace(f0 * rng.uniform(0.85, 1.15), f0 * rng.uniform(0.85, 1.15), m)
        cycles = phase + np.cumsum(pitch) / RATE
        phase = cycles[-1]
        source = np.sign(np.sin(2 * np.pi * cycles)) * np.exp(-(cycles % 1.0) * 6)
        formant = np.cos(2 * np.pi * rng.uniform(300, 2500) * taps) * np.hanning(len(taps))
        out[pos:pos + m] = np.convolve(source, formant)[:m]
        pos += m
    t = np.arange(n) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3.5, 5.5) * t) ** 2
    return out / (np.abs(out).max() + 1e-9) * envelope * level


def generated_call(seed: int) -> np.ndarray:
    """Stereo int16 (customer, agent): turns, pauses that the hangover bridges and ones it does not, the agent
    talking over the customer three times, six seconds of dead air and a customer getting louder."""
    rng = np.random.default_rng(seed)
    customer, agent = [], []

    def add(c: np.ndarray | None, a: np.ndarray | None, seconds: float) -> None:
        n = int(seconds * RATE)
        customer.append(np.zeros(n) if c is None else np.pad(c, (0, n - len(c))))
        agent.append(np.zeros(n) if a is None else np.pad(a, (0, n - len(a))))

    for level in (3000, 3000, 9000):
        add(voice(3.0, 180, level, rng), None, 3.4)
        add(None, voice(2.0, 110, 4000, rng), 2.15)
    for _ in range(3):  # interruptions: the agent starts while the customer speaks, both go on for 0.8 s
        both = np.zeros(int(3.0 * RATE))
        add(voice(3.0, 190, 6000, rng), np.concatenate([both[: int(2.2 * RATE)], voice(0.8, 105, 6000, rng)]), 3.0)
        add(None, voice(1.0, 105, 6000, rng), 1.2)
    add(None, None, 6.0)
    add(voice(4.0, 200, 12000, rng), None, 4.5)
    noise = rng.normal(0, 4, (sum(len(x) for x in customer), 2))
    return np.clip(np.stack([np.concatenate(customer), np.concatenate(agent)], axis=1) + noise, -32768, 32767).astype(np.int16)


def loudness_model() -> FakeEmotionModel:
    """FAKE model: loud windows are angry, others neutral."""
    def script(audio: np.ndarray) -> np.ndarray:
        return one_hot("angry" if len(audio) and float(np.sqrt(np.mean(np.square(audio)))) > 0.15 else "neutral")
    return FakeEmotionModel(script)


TICK_RULES = ("dead-air", "agent-talks-over-customer")


class PushCountingSink(MemorySink):
    """Notes, for each alert of a rule on conversation ticks, how many chunks had been pushed when it was published."""

    def __init__(self) -> None:
        super().__init__()
        self.pushed = 0
        self.tick_alerts: list[tuple[str, int]] = []

    def publish_alert(self, alert, call, arrival) -> None:
        super().publish_alert(alert, call, arrival)
        if alert.rule_id in TICK_RULES:
            self.tick_alerts.append((alert.rule_id, self.pushed))


async def replay(audio: np.ndarray, chunk_frames: int, analysis_ms: int = 100) -> dict:
    """Replay the call through a CallSession in chunks of `chunk_frames` (prosody and turn-taking at least every
    `analysis_ms`); what it produced, in comparable form."""
    model = loudness_model()
    batcher = InferenceBatcher(model, max_batch=4, max_wait_ms=1, queue_size=1024)
    batcher.start()
    engine = RuleEngine(load_rules(DEFAULT_RULES_PATH))
    sink = PushCountingSink()
    ctx = SessionContext(vad=VadConfig(), windows=WindowConfig(), ingest=IngestConfig(max_chunk_bytes=4 << 20), scorer=LocalScoringClient(model, batcher),
                         rules=lambda: engine, publisher=sink, model_name=model.name, labels=model.labels,
                         analytics=AnalyticsConfig(analysis_ms=analysis_ms))
    call = CallConfig("blocks", "agent-1", "team-1", "", AudioFormat(Encoding.PCM16LE, RATE, (Role.CUSTOMER, Role.AGENT)),
                      score_roles=(Role.CUSTOMER,), realtime=False)
    session = CallSession(call, ctx)
    session.start()
    updates, alerts, summaries = [], [], []

    async def consume() -> None:
        async for event in session.events():
            if isinstance(event, EmotionUpdate):
                updates.append({k: v for k, v in asdict(event).items() if k != "latency_ms"})
            elif isinstance(event, Alert):
                alerts.append((event.rule_id, event.speaker, event.start_ms, event.fired_ms, event.document["evidence"]["reason"]))
            elif isinstance(event, CallSummary):
                summaries.append(event)

    consumer = asyncio.create_task(consume())
    try:
        for seq, offset in enumerate(range(0, len(audio), chunk_frames), start=1):
            sink.pushed = seq
            session.push_audio(seq, audio[offset:offset + chunk_frames].astype("<i2").tobytes())
            await session.flow_control()
        await session.finish()
        await consumer
    finally:
        batcher.stop()
    document = dict(summaries[0].document)
    document.pop("wall_time")
    for alert in document["alerts"]:
        alert.pop("alert_id")
    return {"updates": updates, "alerts": sorted(alerts), "summary": document, "stats": session.stats,
            "tick_alerts_at_push": sink.tick_alerts}


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("chunk_ms", [20, 130])
async def test_holding_frames_for_block_analysis_gives_what_analysing_every_push_gives(seed, chunk_ms, monkeypatch):
    """With prosody and turn-taking run on held blocks of frames (at window cuts and every conversation tick), a call
    gives the same emotion updates (prosody figures included), alerts (dead air and interruptions: rules on
    conversation ticks, raised while the same chunk is pushed) and call summary as when they run after every push of 20
    or 130 ms."""
    audio = generated_call(seed)
    chunk = RATE * chunk_ms // 1000
    held = await replay(audio, chunk)
    monkeypatch.setattr(call_analytics, "HELD_FRAMES_MAX", 1)
    every_push = await replay(audio, chunk)
    assert held == every_push
    assert len(held["updates"]) >= 20 and any(u["pitch_hz"] for u in held["updates"])
    assert {rule for rule, _ in held["tick_alerts_at_push"]} == set(TICK_RULES)
    conversation = held["summary"]["conversation"]
    assert conversation["interruptions"]["count"] == 3 and conversation["dead_air_ms"] >= 6000


@pytest.mark.parametrize("chunk_ms", [20, 130])
async def test_analysing_every_half_second_changes_only_when_tick_alerts_are_published(chunk_ms):
    """With analysis_ms 500 (the default) instead of every 100 ms tick, a call gives the same emotion updates, alerts
    (with the same fired_ms) and summary; its tick alerts are published at most 500 ms of audio (and one chunk) later."""
    audio = generated_call(1)
    chunk = RATE * chunk_ms // 1000
    per_tick = await replay(audio, chunk, analysis_ms=100)
    half_second = await replay(audio, chunk, analysis_ms=500)
    late = {key: value for key, value in half_second.items() if key != "tick_alerts_at_push"}
    assert late == {key: value for key, value in per_tick.items() if key != "tick_alerts_at_push"}
    pushes = [at for _, at in half_second["tick_alerts_at_push"]]
    expected = [at for _, at in per_tick["tick_alerts_at_push"]]
    assert [rule for rule, _ in half_second["tick_alerts_at_push"]] == [rule for rule, _ in per_tick["tick_alerts_at_push"]]
    assert all(0 <= got - want <= -(-500 // chunk_ms) for got, want in zip(pushes, expected))
    assert chunk_ms == 130 or any(got > want for got, want in zip(pushes, expected))  # 20 ms chunks: some do wait


async def test_while_a_window_waits_for_the_steady_gate_the_gate_is_never_more_than_a_block_behind():
    """On the bundled call (real speech, whose held vowels keep the gate deciding now and then), after every 20 ms push
    a window waiting for the gate has at most one 80 ms block of decided audio not yet fed to the gate, whatever
    analysis_ms allows, so that it waits no longer than the gate takes to decide."""
    from clients.wavfile import read_wav
    from service.analytics.gate import BLOCK_FRAMES
    from tests.conftest import CALL_WAV

    wav = read_wav(str(CALL_WAV))
    model = loudness_model()
    batcher = InferenceBatcher(model, max_batch=4, max_wait_ms=1, queue_size=1024)
    batcher.start()
    engine = RuleEngine(load_rules(DEFAULT_RULES_PATH))
    ctx = SessionContext(vad=VadConfig(), windows=WindowConfig(), ingest=IngestConfig(), scorer=LocalScoringClient(model, batcher),
                         rules=lambda: engine, publisher=MemorySink(), model_name=model.name, labels=model.labels,
                         analytics=AnalyticsConfig(analysis_ms=1000))
    call = CallConfig("gate-wait", "agent-1", "team-1", "", AudioFormat(Encoding.PCM16LE, wav.sample_rate, (Role.CUSTOMER, Role.AGENT)),
                      score_roles=(Role.CUSTOMER,), realtime=False)
    session = CallSession(call, ctx)
    session.start()

    async def drain() -> None:
        async for _ in session.events():
            pass

    consumer = asyncio.create_task(drain())
    waited = 0
    try:
        step = wav.sample_rate // 50
        for seq, offset in enumerate(range(0, len(wav.samples), step), start=1):
            session.push_audio(seq, wav.samples[offset:offset + step].astype("<i2").tobytes())
            await session.flow_control()
            if any(session._deferred):
                waited += 1
                assert session._pipelines[0].kept_frames < BLOCK_FRAMES
        await session.finish()
        await consumer
    finally:
        batcher.stop()
    assert waited > 0  # the call did make windows wait for the gate


async def _live_call(audio: np.ndarray, work_block_ms: int) -> tuple[list[int], dict]:
    """A live call (realtime) pushed in 20 ms chunks: the frames worked through after each push, and its summary's
    conversation and speakers."""
    model = loudness_model()
    batcher = InferenceBatcher(model, max_batch=4, max_wait_ms=1, queue_size=1024)
    batcher.start()
    engine = RuleEngine(load_rules(DEFAULT_RULES_PATH))
    ctx = SessionContext(vad=VadConfig(), windows=WindowConfig(), ingest=IngestConfig(work_block_ms=work_block_ms, pacing_burst_ms=60000),
                         scorer=LocalScoringClient(model, batcher), rules=lambda: engine, publisher=MemorySink(),
                         model_name=model.name, labels=model.labels, analytics=AnalyticsConfig())
    call = CallConfig("live-blocks", "agent-1", "team-1", "", AudioFormat(Encoding.PCM16LE, RATE, (Role.CUSTOMER, Role.AGENT)),
                      score_roles=(Role.CUSTOMER,), realtime=True)
    session = CallSession(call, ctx)
    session.start()
    summaries = []

    async def consume() -> None:
        async for event in session.events():
            if isinstance(event, CallSummary):
                summaries.append(event.document)

    consumer = asyncio.create_task(consume())
    worked = []
    try:
        step = RATE // 50
        for seq, offset in enumerate(range(0, len(audio), step), start=1):
            session.push_audio(seq, audio[offset:offset + step].astype("<i2").tobytes())
            await session.flow_control()
            worked.append(session._audio_frames)
        await session.finish()
        await consumer
    finally:
        batcher.stop()
    return worked, {"conversation": summaries[0]["conversation"], "prosody": [s["prosody"] for s in summaries[0]["speakers"]]}


async def test_a_live_call_works_through_its_audio_a_block_at_a_time_with_the_same_figures():
    """A live call in 20 ms messages is worked through once 100 ms has queued (after every fifth message, all five at
    once; the rest at the end), and its summary's conversation and prosody figures are those of working through every
    message."""
    audio = generated_call(1)[: 6 * RATE + 3 * RATE // 50]  # 6.06 s: 303 messages
    worked, blocks = await _live_call(audio, 100)
    assert worked == [(k // 5) * 800 for k in range(1, len(worked) + 1)]
    each, every_message = await _live_call(audio, 0)
    assert each == [k * 160 for k in range(1, len(each) + 1)]
    assert blocks == every_message
