"""The scoring client of an ingest worker: windows go to the pod's model engine over ZeroMQ, results come back
as futures. "Engine dead" is a state the sessions see, never a hang.

The client pings the engine every `heartbeat_s`. Until the engine has answered with Ready (model
loaded) and while it has not answered for `timeout_s`, it is unavailable: new windows are refused
with EngineUnavailable and every window waiting for an answer is failed with it at once. An engine
that comes back (the supervisor restarted it) is seen by its new id; windows sent to the old one
are failed, and scoring resumes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import time

import numpy as np
import zmq
import zmq.asyncio

from service.inference import ipc
from service.inference.base import NotSpeech, Spoken, StreamSpan, WindowScores
from service.inference.batcher import QueueFull, StaleWindow
from service.inference.scoring import EngineUnavailable, ScoringClient

log = logging.getLogger(__name__)

UNAVAILABLE = "the emotion engine is unavailable (starting or restarting)"


class RemoteScoringClient(ScoringClient):
    """Scores windows in the engine process at `endpoint` (e.g. ipc:///run/callpulse/engine.sock)."""

    def __init__(self, endpoint: str, worker: int, heartbeat_s: float = 0.5, timeout_s: float = 2.0,
                 max_in_flight: int = 4096) -> None:
        """`max_in_flight`: windows waiting for an answer; one more is refused with QueueFull."""
        self.endpoint = endpoint
        self.worker = worker
        self._heartbeat_s = heartbeat_s
        self._timeout_s = timeout_s
        self._max_in_flight = max_in_flight
        self._context: zmq.asyncio.Context | None = None
        self._socket: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task] = []
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._ids = itertools.count(1)
        self._engine: str | None = None  # the id of the engine that said Ready
        self._heard = 0.0  # time.monotonic() of the engine's last message
        self._ready = asyncio.Event()
        self.restarts_seen = 0
        """How many times a different engine answered (the engine was restarted)."""

    @property
    def available(self) -> bool:
        return self._engine is not None

    async def start(self) -> None:
        """Connect and start the receiver and the heartbeat."""
        self._context = zmq.asyncio.Context()
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # nothing is queued for an engine that is not connected
        sock.setsockopt(zmq.SNDHWM, self._max_in_flight)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(self.endpoint)
        self._socket = sock
        self._tasks = [asyncio.create_task(self._receive(), name="engine-receiver"),
                       asyncio.create_task(self._heartbeat(), name="engine-heartbeat")]

    async def wait_ready(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    def submit(self, audio: np.ndarray, deadline: float | None = None,
               span: StreamSpan | None = None) -> concurrent.futures.Future:
        if self._engine is None or self._socket is None:
            raise EngineUnavailable(UNAVAILABLE)
        if len(self._pending) >= self._max_in_flight:
            raise QueueFull(f"{self._max_in_flight} windows are waiting for the engine")
        window = next(self._ids)
        sent = self._socket.send_multipart([ipc.encode(self._score_message(window, deadline, span)), ipc.array_frame(audio)],
                                           flags=zmq.DONTWAIT, copy=False)
        if sent.done() and sent.exception() is not None:
            if isinstance(sent.exception(), zmq.Again):
                raise QueueFull("the engine's queue is full")
            raise EngineUnavailable(f"{UNAVAILABLE}: {sent.exception()}")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._pending[window] = future
        future.add_done_callback(lambda f, window=window: self._withdrawn(window, f))
        return future

    @staticmethod
    def _score_message(window: int, deadline: float | None, span: StreamSpan | None) -> ipc.Score:
        if span is None:
            return ipc.Score(window, deadline)
        if not isinstance(span.stream, int):
            raise TypeError(f"a window's stream must be an int to cross to the engine, got {type(span.stream).__name__}")
        return ipc.Score(window, deadline, span.stream, span.start, span.check_only)

    def _withdrawn(self, window: int, future: concurrent.futures.Future) -> None:
        if future.cancelled() and self._pending.pop(window, None) is not None and self._socket is not None:
            self._send(ipc.Cancel(window))

    def _send(self, message) -> None:
        assert self._socket is not None
        sent = self._socket.send_multipart([ipc.encode(message)], flags=zmq.DONTWAIT)
        if sent.done():
            sent.exception()  # retrieved: a message the engine misses (a ping, a cancel) is not worth an error

    async def _heartbeat(self) -> None:
        while True:
            self._send(ipc.Ping() if self._engine is not None else ipc.Hello(self.worker))
            await asyncio.sleep(self._heartbeat_s)
            if self._engine is not None and time.monotonic() - self._heard > self._timeout_s:
                log.warning("the emotion engine did not answer for %.1f s; its windows fail until it is back", self._timeout_s)
                self._lost()

    def _lost(self) -> None:
        """The engine is gone: fail what waits for it."""
        self._engine = None
        self._ready.clear()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done() and future.set_running_or_notify_cancel():
                future.set_exception(EngineUnavailable(UNAVAILABLE))

    async def _receive(self) -> None:
        assert self._socket is not None
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            self._heard = time.monotonic()
            try:
                message = ipc.decode_to_worker(frames[0].buffer)
            except Exception:  # noqa: BLE001 - a malformed message must not stop the receiver
                log.exception("a malformed message from the engine was ignored")
                continue
            if isinstance(message, ipc.Scored):
                self._scored(message, frames[1:])
            elif isinstance(message, (ipc.Unspoken, ipc.Spoken)):
                self._speech_answer(message)
            elif isinstance(message, ipc.Failed):
                self._failed(message)
            elif isinstance(message, ipc.Ready):
                self._engine_ready(message)
            elif isinstance(message, ipc.Pong):
                if message.engine != self._engine:
                    if self._engine is not None:
                        self._lost()  # a new engine: the old one's windows will never be answered
                    self._send(ipc.Hello(self.worker))

    def _engine_ready(self, ready: ipc.Ready) -> None:
        if self._engine is not None and ready.engine != self._engine:
            self._lost()
        if self._engine is None:
            if self.name:
                self.restarts_seen += 1
                log.info("the emotion engine is back; scoring resumes")
            self.name, self.labels = ready.model, tuple(ready.labels)
            self._engine = ready.engine
            self._ready.set()

    def _scored(self, message: ipc.Scored, arrays: list) -> None:
        future = self._pending.pop(message.id, None)
        if future is None or not future.set_running_or_notify_cancel():
            return
        labels = len(self.labels)
        scores = ipc.frame_array(arrays[0])
        logits = ipc.frame_array(arrays[1], (message.frames, labels))
        embedding = ipc.frame_array(arrays[2]) if message.embedding else None
        future.set_result(WindowScores(scores=scores, frame_logits=logits, embedding=embedding))

    def _speech_answer(self, message: ipc.Unspoken | ipc.Spoken) -> None:
        future = self._pending.pop(message.id, None)
        if future is not None and future.set_running_or_notify_cancel():
            future.set_result(NotSpeech(message.speech) if isinstance(message, ipc.Unspoken) else Spoken(message.speech))

    def _failed(self, message: ipc.Failed) -> None:
        future = self._pending.pop(message.id, None)
        if future is None or not future.set_running_or_notify_cancel():
            return
        if message.kind == "stale":
            future.set_exception(StaleWindow(message.message))
        elif message.kind == "full":
            future.set_exception(QueueFull(message.message))
        else:
            future.set_exception(RuntimeError(message.message))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        self._lost()
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None
