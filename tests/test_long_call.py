"""A two-hour call replayed as fast as possible keeps every per-call buffer bounded."""

import asyncio

import numpy as np
import soxr

from clients.wavfile import read_wav
from service.alerts import AlertPublisher
from service.config import DEFAULT_RULES_PATH, IngestConfig, RedisConfig, VadConfig, WindowConfig
from service.domain import AudioFormat, CallConfig, Encoding, Role
from service.inference.batcher import InferenceBatcher
from service.inference.scoring import LocalScoringClient
from service.rules import RuleEngine, load_rules
from service.session import CallSession, SessionContext
from tests.conftest import CUSTOMER_WAV
from tests.fakes import FakeEmotionModel

HOURS = 2
CHUNK_S = 1


def one_minute_of_call() -> np.ndarray:
    """8 kHz mono: the customer fixture's speech, then silence, repeated to one minute."""
    speech = read_wav(str(CUSTOMER_WAV)).samples[:, 0].astype(np.float32)
    speech = np.clip(soxr.resample(speech, 16000, 8000), -32768, 32767).astype(np.int16)
    block = np.concatenate([speech, np.zeros(8000 * 2, np.int16)])
    reps = int(np.ceil(60 * 8000 / len(block)))
    return np.tile(block, reps)[: 60 * 8000]


async def test_two_hour_replay_keeps_buffers_bounded(redis_server):
    """Buffer sizes the session reports after two hours equal their bound, not something growing with the call."""
    model = FakeEmotionModel()
    batcher = InferenceBatcher(model, max_batch=32, max_wait_ms=1, queue_size=256)
    batcher.start()
    publisher = AlertPublisher(RedisConfig(url=redis_server.url, prefix="longcall"))
    await publisher.start()
    windows = WindowConfig()
    engine = RuleEngine(load_rules(DEFAULT_RULES_PATH))
    ctx = SessionContext(
        vad=VadConfig(), windows=windows, ingest=IngestConfig(max_chunk_bytes=65536, max_call_duration_s=3 * 3600),
        scorer=LocalScoringClient(model, batcher), rules=lambda: engine,
        publisher=publisher, model_name=model.name, labels=model.labels,
    )
    call = CallConfig("long-1", "a", "t", "", AudioFormat(Encoding.PCM16LE, 8000, (Role.CUSTOMER,)), realtime=False)
    session = CallSession(call, ctx)
    session.start()
    events = {"emotion": 0}

    async def consume():
        async for event in session.events():
            if type(event).__name__ == "EmotionUpdate":
                events["emotion"] += 1

    consumer = asyncio.create_task(consume())
    minute = one_minute_of_call()
    reports = []
    seq = 0
    try:
        for minute_index in range(HOURS * 60):
            for start in range(0, len(minute), 8000 * CHUNK_S):
                seq += 1
                session.push_audio(seq, minute[start : start + 8000 * CHUNK_S].astype("<i2").tobytes())
                await session.flow_control()
            if minute_index % 10 == 9:
                reports.append(session.memory_report())
        summary = await session.finish()
        await consumer
    finally:
        batcher.stop()
        await publisher.stop()

    assert summary.duration_ms == HOURS * 3600 * 1000
    first, last = reports[0], reports[-1]
    assert last["channel_samples"] == first["channel_samples"] <= 8000 * 4  # ~3.6 s ring + a partial frame
    for report in reports:
        assert report["reorder_chunks"] <= ctx.ingest.reorder_window
        assert report["pending_windows"] <= windows.max_pending_windows
        assert report["ready_windows"] <= 8
        assert report["queued_events"] <= 256
        assert report["timeline_updates"] <= 120
    assert events["emotion"] > HOURS * 60 * 10  # the call really was scored all along
    speaker = summary.speakers[0]
    assert speaker.windows_dropped == 0 and speaker.windows_scored == events["emotion"]
