"""Turns chunks as they arrive (out of order, duplicated, with holes, or as separate tracks) into ordered frames.

Policy, for every call:
- the stream starts at the first seq if it is 0 or 1; otherwise the first chunks are held until the
  window fills and the stream starts at the lowest seq seen (chunks may overtake the first one);
- chunks are put back in seq order while at most `window` of them wait for a missing one;
- when more are waiting, the missing chunks are declared lost and replaced by silence of the same
  length as the chunk after the hole (bridges send fixed-length chunks);
- a chunk whose seq was already delivered (or declared lost) is dropped: a duplicate if it was
  delivered, late otherwise;
- a seq further back than the window, or further ahead than `max_jump`, means the stream is broken
  and is refused with InvalidArgument.
Memory is bounded by `window` chunks per track.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from service.errors import InvalidArgument

T = TypeVar("T")


@dataclass(frozen=True)
class Gap:
    """`missing` consecutive chunks were lost just before `before_seq`."""

    missing: int
    before_seq: int


@dataclass(frozen=True)
class Notice:
    """Something about the stream the session reports: a filled gap, a duplicate or a late chunk."""

    kind: str  # "gap" | "duplicate" | "late"
    seq: int
    chunks: int = 1
    frames: int = 0
    track: int = 0


class SeqReorderBuffer(Generic[T]):
    """Restores seq order within a bounded window."""

    def __init__(self, window: int, max_jump: int) -> None:
        self._window = window
        self._max_jump = max_jump
        self._next: int | None = None
        self._pending: dict[int, T] = {}
        self._recent: deque[int] = deque(maxlen=max(window, 1) * 4)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def push(self, seq: int, item: T) -> tuple[list[tuple[int, T] | Gap], str]:
        """Add one item; returns what can be delivered now (in order, with Gaps) and "accepted", "duplicate" or "late"."""
        if self._next is None:
            if seq in self._pending:
                return [], "duplicate"
            if self._pending and abs(seq - min(self._pending)) > self._max_jump:
                raise InvalidArgument(f"seq jumped from {min(self._pending)} to {seq}: more than {self._max_jump} chunks apart")
            self._pending[seq] = item
            lowest = min(self._pending)
            if lowest > 1 and len(self._pending) <= self._window:
                return [], "accepted"  # the stream's first chunk may still be on its way
            self._next = lowest
            out: list[tuple[int, T] | Gap] = []
            self._deliver_ready(out)
            self._declare_lost(out)
            return out, "accepted"
        if seq < self._next:
            if self._next - seq > self._window + len(self._recent):
                raise InvalidArgument(f"seq={seq} is far behind the stream (next expected seq={self._next}); seq must increase")
            return [], "duplicate" if seq in self._recent else "late"
        if seq in self._pending:
            return [], "duplicate"
        if seq - self._next > self._max_jump:
            raise InvalidArgument(
                f"seq jumped from {self._next - 1} to {seq}: more than {self._max_jump} chunks missing; seq must increase by 1 per chunk"
            )
        self._pending[seq] = item
        out: list[tuple[int, T] | Gap] = []
        self._deliver_ready(out)
        self._declare_lost(out)
        return out, "accepted"

    def _declare_lost(self, out: list) -> None:
        while len(self._pending) > self._window:
            first = min(self._pending)
            out.append(Gap(first - self._next, first))
            self._next = first
            self._deliver_ready(out)

    def flush(self) -> list[tuple[int, T] | Gap]:
        """Deliver everything still waiting, declaring the holes before it lost."""
        out: list[tuple[int, T] | Gap] = []
        if self._next is None and self._pending:
            self._next = min(self._pending)
        while self._pending:
            first = min(self._pending)
            if first > self._next:
                out.append(Gap(first - self._next, first))
                self._next = first
            self._deliver_ready(out)
        return out

    def _deliver_ready(self, out: list) -> None:
        while self._next in self._pending:
            out.append((self._next, self._pending.pop(self._next)))
            self._recent.append(self._next)
            self._next += 1


def _expand(deliveries: list, channels: int, track: int = 0) -> tuple[list[np.ndarray], list[Notice]]:
    """Deliveries of decoded (frames, channels) arrays -> arrays with gaps filled by silence, plus notices."""
    frames_out: list[np.ndarray] = []
    notices: list[Notice] = []
    pending_gap: Gap | None = None
    for delivery in deliveries:
        if isinstance(delivery, Gap):
            pending_gap = delivery
            continue
        seq, frames = delivery
        if pending_gap is not None:
            fill = np.zeros((pending_gap.missing * len(frames), channels), dtype=np.int16)
            frames_out.append(fill)
            notices.append(Notice("gap", pending_gap.before_seq, pending_gap.missing, len(fill), track))
            pending_gap = None
        frames_out.append(frames)
    return frames_out, notices


class InterleavedIngest:
    """Ordered frames from interleaved chunks (gRPC, native WebSocket, AudioHook)."""

    def __init__(self, channels: int, window: int, max_jump: int) -> None:
        self._channels = channels
        self._buffer: SeqReorderBuffer[np.ndarray] = SeqReorderBuffer(window, max_jump)

    @property
    def waiting_chunks(self) -> int:
        return self._buffer.waiting

    def push(self, seq: int, frames: np.ndarray) -> tuple[list[np.ndarray], list[Notice]]:
        deliveries, status = self._buffer.push(seq, frames)
        out, notices = _expand(deliveries, self._channels)
        if status != "accepted":
            notices.append(Notice(status, seq))
        return out, notices

    def flush(self) -> tuple[list[np.ndarray], list[Notice]]:
        return _expand(self._buffer.flush(), self._channels)


@dataclass
class _Track:
    buffer: SeqReorderBuffer
    queued: deque = field(default_factory=deque)
    queued_frames: int = 0
    written_end: int = 0  # absolute frame index one past the last frame placed on this track


class TrackIngest:
    """Ordered multi-channel frames from separate mono tracks (Twilio's inbound/outbound).

    Each track is reordered by its own chunk numbers and placed at its start offset when one is
    given (missing audio before it becomes silence; audio overlapping what was placed is dropped).
    Frames are released when every track has them; a track that falls more than `max_skew` frames
    behind the others is padded with silence so that the others are never held back longer.
    """

    def __init__(self, tracks: int, window: int, max_jump: int, max_skew: int) -> None:
        self._tracks = [_Track(SeqReorderBuffer(window, max_jump)) for _ in range(tracks)]
        self._max_skew = max_skew
        self._released = 0

    @property
    def waiting_chunks(self) -> int:
        return sum(t.buffer.waiting for t in self._tracks)

    @property
    def queued_frames(self) -> int:
        return sum(t.queued_frames for t in self._tracks)

    def push(self, track: int, seq: int, samples: np.ndarray, start_frame: int | None = None) -> tuple[list[np.ndarray], list[Notice]]:
        state = self._tracks[track]
        deliveries, status = state.buffer.push(seq, (samples, start_frame))
        notices: list[Notice] = [] if status == "accepted" else [Notice(status, seq, track=track)]
        self._place(track, deliveries, notices)
        return self._release(), notices

    def flush(self) -> tuple[list[np.ndarray], list[Notice]]:
        notices: list[Notice] = []
        for index, state in enumerate(self._tracks):
            self._place(index, state.buffer.flush(), notices)
        end = max(t.written_end for t in self._tracks)
        for state in self._tracks:
            self._pad(state, end - state.written_end)
        return self._release(), notices

    def _place(self, index: int, deliveries: list, notices: list[Notice]) -> None:
        state = self._tracks[index]
        gap: Gap | None = None
        for delivery in deliveries:
            if isinstance(delivery, Gap):
                gap = delivery
                continue
            seq, (samples, start) = delivery
            if start is None:
                start = state.written_end + (gap.missing * len(samples) if gap else 0)
            if start > state.written_end:
                missing = start - state.written_end
                self._pad(state, missing)
                notices.append(Notice("gap", seq, gap.missing if gap else 1, missing, index))
            elif start < state.written_end:
                samples = samples[state.written_end - start :]
            gap = None
            if len(samples):
                state.queued.append(samples)
                state.queued_frames += len(samples)
                state.written_end += len(samples)

    def _pad(self, state: _Track, frames: int) -> None:
        if frames > 0:
            state.queued.append(np.zeros(frames, dtype=np.int16))
            state.queued_frames += frames
            state.written_end += frames

    def _release(self) -> list[np.ndarray]:
        ends = [t.written_end for t in self._tracks]
        lead = max(ends)
        for state in self._tracks:
            if lead - state.written_end > self._max_skew:
                self._pad(state, lead - self._max_skew - state.written_end)
        ready = min(t.written_end for t in self._tracks) - self._released
        if ready <= 0:
            return []
        columns = [self._take(state, ready) for state in self._tracks]
        self._released += ready
        return [np.stack(columns, axis=1)]

    @staticmethod
    def _take(state: _Track, frames: int) -> np.ndarray:
        parts = []
        need = frames
        while need:
            head = state.queued[0]
            if len(head) <= need:
                parts.append(state.queued.popleft())
                need -= len(head)
            else:
                parts.append(head[:need])
                state.queued[0] = head[need:]
                need = 0
        state.queued_frames -= frames
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
