"""The worker-engine link in one process: scores through ZeroMQ equal the in-process scores, and an engine that goes
away fails its windows at once and is picked up again when it comes back."""

import asyncio
import concurrent.futures
import contextlib
import time

import numpy as np
import pytest
import zmq.asyncio

from clients.wavfile import read_wav
from service.alerts import EventSink
from service.config import IngestConfig, VadConfig, WindowConfig
from service.domain import AudioFormat, CallConfig, Encoding, Role
from service.engine import EngineServer
from service.inference.batcher import InferenceBatcher
from service.inference.emotion2vec import Emotion2vecModel
from service.inference.remote import RemoteScoringClient
from service.inference.scoring import EngineUnavailable, LocalScoringClient
from service.rules import RuleEngine, parse_rules
from service.session import CallSession, SessionContext
from tests.conftest import CALL_WAV


@pytest.fixture(scope="module")
def model(test_models):
    return Emotion2vecModel.load(test_models["random"], threads=1)


def _windows(count=6, seed=3):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(int(16000 * length)) * 0.1).astype(np.float32) for length in np.linspace(0.6, 3.5, count)]


class Engine:
    """An EngineServer on this loop, serving `model` behind a batcher."""

    def __init__(self, endpoint, model):
        self.context = zmq.asyncio.Context()
        self.server = EngineServer(endpoint)
        self.server.bind(self.context)
        self.batcher = InferenceBatcher(model, max_batch=4, max_wait_ms=2)
        self.batcher.start()
        self.server.serve_model(LocalScoringClient(model, self.batcher))
        self.task = asyncio.create_task(self.server.run())

    async def close(self):
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        self.server.close()
        self.batcher.stop()
        self.context.term()


@contextlib.asynccontextmanager
async def engine_link(endpoint, model):
    """An Engine serving `model` at `endpoint` and a RemoteScoringClient that has heard it is ready; both closed after."""
    engine = Engine(endpoint, model)
    client = RemoteScoringClient(endpoint, worker=0)
    await client.start()
    try:
        await client.wait_ready(10)
        yield client
    finally:
        await client.close()
        await engine.close()


async def test_scores_through_the_engine_equal_in_process_scores(model, tmp_path):
    """Every window scored by the engine over IPC has the same scores and frame logits as in process (1e-5)."""
    endpoint = f"ipc://{tmp_path}/engine.sock"
    engine = Engine(endpoint, model)
    client = RemoteScoringClient(endpoint, worker=0)
    await client.start()
    await client.wait_ready(10)
    assert client.labels == model.labels and client.name == model.name
    windows = _windows()
    remote = [await asyncio.wrap_future(client.submit(w)) for w in windows]
    local = model.score_batch(windows)
    for got, want in zip(remote, local):
        assert got.frame_logits.shape == want.frame_logits.shape
        assert np.max(np.abs(got.frame_logits - want.frame_logits)) <= 1e-5
        assert np.max(np.abs(got.scores - want.scores)) <= 1e-5
    await client.close()
    await engine.close()


async def test_a_cancelled_window_is_withdrawn_and_a_stale_one_fails_as_stale(model, tmp_path):
    """A window cancelled before the engine starts on it is never answered as scored; one past its deadline fails
    with StaleWindow, as in process."""
    from service.inference.batcher import StaleWindow

    endpoint = f"ipc://{tmp_path}/engine.sock"
    engine = Engine(endpoint, model)
    client = RemoteScoringClient(endpoint, worker=0)
    await client.start()
    await client.wait_ready(10)
    stale = client.submit(_windows(1)[0], deadline=time.monotonic() - 1)
    with pytest.raises(StaleWindow):
        await asyncio.wrap_future(stale)
    cancelled = client.submit(_windows(1)[0])
    assert cancelled.cancel()
    after = await asyncio.wrap_future(client.submit(_windows(1)[0]))
    assert after.scores.shape == (len(model.labels),) and cancelled.cancelled()
    await client.close()
    await engine.close()


async def test_an_engine_that_goes_away_fails_pending_windows_and_comes_back(model, tmp_path):
    """With the engine gone, waiting windows fail with EngineUnavailable within the heartbeat timeout and new ones are
    refused at once (no hang); a new engine on the same endpoint is picked up and scores again."""
    endpoint = f"ipc://{tmp_path}/engine.sock"
    engine = Engine(endpoint, model)
    client = RemoteScoringClient(endpoint, worker=0, heartbeat_s=0.1, timeout_s=0.5)
    await client.start()
    await client.wait_ready(10)
    engine.batcher.stop()  # the engine stops answering windows...
    pending = client.submit(_windows(1)[0])
    await engine.close()  # ...and goes away
    began = time.monotonic()
    with pytest.raises(EngineUnavailable):
        await asyncio.wait_for(asyncio.wrap_future(pending), 5)
    assert time.monotonic() - began < 2 and not client.available
    with pytest.raises(EngineUnavailable):
        client.submit(_windows(1)[0])
    again = Engine(endpoint, model)
    await client.wait_ready(10)
    result = await asyncio.wrap_future(client.submit(_windows(1)[0]))
    assert result.scores.shape == (len(model.labels),) and client.restarts_seen == 1
    await client.close()
    await again.close()


def test_a_session_scoring_through_an_absent_engine_drops_windows_and_goes_on():
    """A live session whose scorer reports the engine unavailable counts each window as dropped_engine_unavailable,
    marks its updates degraded, and still ends with its summary."""
    class Absent(LocalScoringClient):
        def __init__(self):
            self.name, self.labels = "absent", ("angry", "neutral")

        def submit(self, audio, deadline=None, span=None) -> concurrent.futures.Future:
            raise EngineUnavailable("the emotion engine is unavailable (restarting)")

    async def scenario():
        class Sink(EventSink):
            def publish_alert(self, alert, call, arrival):
                pass

            def publish_call_event(self, document):
                pass

        scorer = Absent()
        engine = RuleEngine(parse_rules("rules: []"))
        ctx = SessionContext(vad=VadConfig(), windows=WindowConfig(), ingest=IngestConfig(), scorer=scorer, rules=lambda: engine,
                             publisher=Sink(), model_name=scorer.name, labels=scorer.labels)
        audio = read_wav(str(CALL_WAV)).samples
        session = CallSession(CallConfig("absent-1", "a", "t", "", AudioFormat(Encoding.PCM16LE, 8000, (Role.CUSTOMER, Role.AGENT)),
                                         realtime=False), ctx)
        session.start()
        events = []

        async def collect():
            async for event in session.events():
                events.append(event)

        collector = asyncio.create_task(collect())
        for seq, offset in enumerate(range(0, len(audio), 160), start=1):
            session.push_audio(seq, audio[offset:offset + 160].astype("<i2").tobytes())
            await session.flow_control()
        summary = await session.finish()
        await collector
        return summary, events

    summary, events = asyncio.run(scenario())
    customer = summary.document["speakers"][0]
    assert customer["windows_dropped"] > 0 and customer["windows_scored"] == 0
    assert any(getattr(e, "code", None) == "WINDOWS_DROPPED" for e in events)
    assert events[-1] is summary


async def test_a_burst_of_windows_is_answered_in_full_with_cancelled_ones_left_out(tmp_path):
    """64 windows sent at once (answered together, one batch at a time): every window not cancelled gets its scores,
    and the cancelled ones are withdrawn without an answer."""
    from service.inference.constant import ConstantEmotionModel

    model = ConstantEmotionModel()
    async with engine_link(f"ipc://{tmp_path}/engine.sock", model) as client:
        futures = [client.submit(np.zeros(16000, np.float32)) for _ in range(64)]
        for future in futures[::8]:
            future.cancel()
        done, _ = await asyncio.wait([asyncio.wrap_future(f) for f in futures if not f.cancelled()], timeout=10)
        results = [task.result() for task in done]
        assert len(results) == 56 and all(r.scores.shape == (len(model.labels),) for r in results)
        assert all(f.cancelled() for f in futures[::8])
