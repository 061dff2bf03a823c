"""Messages between ingest workers and the model engine: typed structs (msgspec, MessagePack) with arrays as
separate frames, the way vLLM's API servers talk to its EngineCore.

A message is a ZeroMQ multipart message: the encoded struct, then one frame per array (raw float32
bytes, sent without a copy and read back with numpy.frombuffer). Workers use DEALER sockets, the
engine one ROUTER socket (which prefixes each message with the worker's identity).

  worker -> engine:  Hello (who I am), Score(id, deadline, channel stream and start, check only) + audio frame,
                     Cancel(id), Ping
  engine -> worker:  Ready(engine id, model, labels), Scored(id, frames, labels) + scores + frame logits
                     frames, Unspoken(id, speech share: not speech by the engine's speech check), Spoken(id, speech
                     share: a check-only window that is speech), Failed(id, kind, message), Pong(engine id)
"""

from __future__ import annotations

from typing import Union

import msgspec
import numpy as np


class Hello(msgspec.Struct, tag="hello"):
    """A worker connected (or reconnected): the engine answers Ready once its model is loaded."""

    worker: int


class Score(msgspec.Struct, tag="score"):
    """Score the window in the next frame (16 kHz float32)."""

    id: int
    deadline: float | None
    """time.monotonic() after which the window is not worth scoring (the clock is shared by the machine's processes)."""
    stream: int | None = None
    """The window's channel, unique within the worker (base.StreamSpan); None: a window on its own."""
    start: int = 0
    """The window's first sample in its channel's 16 kHz timeline."""
    check_only: bool = False
    """Only check the window for speech (base.StreamSpan.check_only): answered Spoken or Unspoken."""


class Cancel(msgspec.Struct, tag="cancel"):
    """The window was withdrawn (a newer one replaced it, its call went away)."""

    id: int


class Ping(msgspec.Struct, tag="ping"):
    """Heartbeat; answered by Pong."""


class Ready(msgspec.Struct, tag="ready"):
    """The engine's model is loaded and warm."""

    engine: str
    """Changes at every engine start: windows sent to an earlier engine will never be answered."""
    model: str
    labels: list[str]


class Scored(msgspec.Struct, tag="scored"):
    """A window's result; the next two frames are its scores (labels) and frame logits (frames x labels)."""

    id: int
    frames: int
    embedding: bool = False
    """A third frame carries the embedding (batch analysis only)."""


class Unspoken(msgspec.Struct, tag="unspoken"):
    """A window the engine's speech check found not to be speech: not scored (base.NotSpeech)."""

    id: int
    speech: float


class Spoken(msgspec.Struct, tag="spoken"):
    """A window sent only to be checked for speech that the check found to be speech (base.Spoken)."""

    id: int
    speech: float


class Failed(msgspec.Struct, tag="failed"):
    """A window's error: kind is stale (its deadline passed), full (the engine's queue), or failed (the model)."""

    id: int
    kind: str
    message: str


class Pong(msgspec.Struct, tag="pong"):
    """Heartbeat answer."""

    engine: str
    ready: bool


ToEngine = Union[Hello, Score, Cancel, Ping]
ToWorker = Union[Ready, Scored, Unspoken, Spoken, Failed, Pong]

_encoder = msgspec.msgpack.Encoder()
_to_engine = msgspec.msgpack.Decoder(ToEngine)
_to_worker = msgspec.msgpack.Decoder(ToWorker)


def encode(message: msgspec.Struct) -> bytes:
    """The struct's frame."""
    return _encoder.encode(message)


def decode_to_engine(frame) -> ToEngine:
    return _to_engine.decode(frame)


def decode_to_worker(frame) -> ToWorker:
    return _to_worker.decode(frame)


def array_frame(array: np.ndarray) -> memoryview:
    """A contiguous float32 array as a frame, without a copy."""
    return memoryview(np.ascontiguousarray(array, dtype=np.float32)).cast("B")


def frame_array(frame, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A float32 frame as an array (a view of the frame's buffer, no copy)."""
    array = np.frombuffer(frame.buffer if hasattr(frame, "buffer") else frame, dtype=np.float32)
    return array.reshape(shape) if shape is not None else array
