"""The model engine process of a pod: the only process that imports torch and funasr. It loads the model, and
micro-batches the windows of every worker into one forward pass (InferenceBatcher: the same deadline,
stale and queue policy as in a single process), serving them over one ZeroMQ ROUTER socket.

Composition root of the engine: configuration -> model -> batcher -> EngineServer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import uuid

import zmq
import zmq.asyncio

from service.inference import ipc
from service.inference.base import NotSpeech, Spoken, StreamSpan
from service.inference.batcher import QueueFull, StaleWindow
from service.inference.scoring import LocalScoringClient

log = logging.getLogger(__name__)


class EngineServer:
    """Answers the workers' Hello, Ping, Score and Cancel messages with the model behind `scorer`."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.id = uuid.uuid4().hex
        self.scorer: LocalScoringClient | None = None
        self._socket: zmq.asyncio.Socket | None = None
        self._pending: dict[tuple[bytes, int], object] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Windows whose futures are done, answered by one _drain on the event loop: the batcher finishes a whole
        # batch at once, and waking the loop once per batch instead of once per window saves a self-pipe write
        # and a loop turn per window.
        self._done: collections.deque = collections.deque()
        self._drain_scheduled = False

    def bind(self, context: zmq.asyncio.Context) -> None:
        """Listen now (pings are answered, "not ready", while the model loads)."""
        sock = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a reply to a worker that went away is dropped
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.bind(self.endpoint)
        self._socket = sock

    def serve_model(self, scorer: LocalScoringClient) -> None:
        """The model is loaded and warm: take windows from now on."""
        self.scorer = scorer

    async def run(self) -> None:
        """Serve until cancelled."""
        assert self._socket is not None
        self._loop = asyncio.get_running_loop()
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            try:
                self._handle(frames)
            except Exception:  # noqa: BLE001 - one bad message must not stop the engine
                log.exception("a message from a worker could not be handled")

    def _handle(self, frames: list) -> None:
        identity = frames[0].bytes
        message = ipc.decode_to_engine(frames[1].buffer)
        if isinstance(message, ipc.Score):
            self._score(identity, message, frames[2])
        elif isinstance(message, ipc.Cancel):
            future = self._pending.pop((identity, message.id), None)
            if future is not None:
                future.cancel()
        elif isinstance(message, ipc.Ping):
            self._reply(identity, ipc.Pong(self.id, self.scorer is not None))
        elif isinstance(message, ipc.Hello):
            if self.scorer is None:
                self._reply(identity, ipc.Pong(self.id, False))
            else:
                self._reply(identity, ipc.Ready(self.id, self.scorer.name, list(self.scorer.labels)))

    def _score(self, identity: bytes, message: ipc.Score, audio_frame) -> None:
        if self.scorer is None:
            self._reply(identity, ipc.Failed(message.id, "failed", "the engine is still loading its model"))
            return
        audio = ipc.frame_array(audio_frame)  # a view of the received frame: no copy
        try:
            # A worker's stream ids are its own: with its identity they name one channel among all the workers'.
            span = None if message.stream is None else StreamSpan((identity, message.stream), message.start, message.check_only)
            future = self.scorer.submit(audio, deadline=message.deadline, span=span)
        except QueueFull as exc:
            self._reply(identity, ipc.Failed(message.id, "full", str(exc)))
            return
        key = (identity, message.id)
        self._pending[key] = future
        future.add_done_callback(lambda f: self._finished(key, f))

    def _finished(self, key: tuple[bytes, int], future) -> None:
        """A window's future is done (on the batcher's thread, or on the loop when it was cancelled)."""
        self._done.append((key, future))
        if not self._drain_scheduled:  # under the GIL: a drain already scheduled will find this one too
            self._drain_scheduled = True
            loop = self._loop
            assert loop is not None
            loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False  # before popping: whatever is appended from now on schedules another drain
        done = self._done
        while done:
            key, future = done.popleft()
            self._answer(key, future)

    def _answer(self, key: tuple[bytes, int], future) -> None:
        self._pending.pop(key, None)
        if future.cancelled():
            return
        identity, window = key
        error = future.exception()
        result = future.result() if error is None else None
        if isinstance(result, NotSpeech):
            self._reply(identity, ipc.Unspoken(window, result.speech))
        elif isinstance(result, Spoken):
            self._reply(identity, ipc.Spoken(window, result.speech))
        elif error is None:
            frames = [ipc.array_frame(result.scores), ipc.array_frame(result.frame_logits)]
            if result.embedding is not None:
                frames.append(ipc.array_frame(result.embedding))
            header = ipc.Scored(window, int(result.frame_logits.shape[0]), result.embedding is not None)
            self._send([identity, ipc.encode(header), *frames])
        elif isinstance(error, StaleWindow):
            self._reply(identity, ipc.Failed(window, "stale", str(error)))
        else:
            self._reply(identity, ipc.Failed(window, "failed", f"{type(error).__name__}: {error}"))

    def _reply(self, identity: bytes, message) -> None:
        self._send([identity, ipc.encode(message)])

    def _send(self, frames: list) -> None:
        assert self._socket is not None
        sent = self._socket.send_multipart(frames, flags=zmq.DONTWAIT, copy=False)
        if sent.done():
            sent.exception()  # a worker that went away: its answer is dropped

    def close(self) -> None:
        for future in list(self._pending.values()):
            future.cancel()
        self._pending.clear()
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None


async def serve_engine(config, endpoint: str, stop: asyncio.Event, on_ready=None) -> None:
    """Run the engine until `stop` is set: bind, load and warm the model, serve; `on_ready(model name)` once it
    takes windows."""
    from service.inference.batcher import InferenceBatcher
    from service.inference.loading import load_emotion_model, warm_up_model

    context = zmq.asyncio.Context()
    server = EngineServer(endpoint)
    server.bind(context)
    serving = asyncio.create_task(server.run(), name="engine-server")
    loop = asyncio.get_running_loop()
    model = await loop.run_in_executor(None, load_emotion_model, config)
    await loop.run_in_executor(None, warm_up_model, model, config)
    inf = config.inference
    batcher = InferenceBatcher(model, inf.effective_max_batch, inf.max_wait_ms, inf.queue_size)
    batcher.start()
    scorer = LocalScoringClient(model, batcher)
    server.serve_model(scorer)
    log.info("engine ready: model %s, max batch %d", model.name, inf.effective_max_batch)
    if on_ready is not None:
        on_ready(model.name)
    try:
        await stop.wait()
    finally:
        serving.cancel()
        try:
            await serving
        except asyncio.CancelledError:
            pass
        await scorer.close()
        server.close()
        context.term()
        model.close()


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
