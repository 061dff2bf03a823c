"""Turns chunks as they arrive (out of order, duplicated, with holes, or as separate tracks) into ordered frames.

Policy, for every call:
- the stream starts at the first seq if it is 0 or 1; otherwise the first chunks are held until the
  window fills and the stream starts at the lowest seq seen (chunks may overtake the first one);
- chunks are put back in seq order while at most `window` of them wait for a missing one;
- when more are waiting, the missing chunks are declared lost and replaced by silence of the same
  length as the chunk after the hole (bridges send fixed-length chunks): up to `max_fill` frames as
  zero samples, a longer hole as a `Silence` marker that the session steps over arithmetically, and a
  hole longer than `max_gap` frames is refused with InvalidArgument (no message can make the service
  synthesise or hold more than a bounded amount of audio);
- a chunk whose seq was already delivered (or declared lost) is dropped: a duplicate if it was
  delivered, late otherwise;
- a seq further back than the window, or further ahead than `max_jump`, means the stream is broken
  and is refused with InvalidArgument.
Memory is bounded by `window` chunks per track (silence is kept as a length, never as samples).
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
class Silence:
    """`frames` frames of the call with no audio (a long hole): the call clock advances over them, no
    samples are made."""

    frames: int


def _silence(frames: int, channels: int, max_fill: int) -> np.ndarray | Silence:
    return np.zeros((frames, channels), dtype=np.int16) if frames <= max_fill else Silence(frames)


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
        if seq == self._next and not self._pending:  # the usual case: the next chunk, nothing waiting
            self._recent.append(seq)
            self._next = seq + 1
            return [(seq, item)], "accepted"
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


def _check_gap(frames: int, max_gap: int, where: str) -> None:
    if frames > max_gap:
        raise InvalidArgument(f"{where}: a hole of {frames} frames in the audio is more than the {max_gap} allowed (max_gap_s); "
                              "the stream is broken")


class InterleavedIngest:
    """Ordered frames from interleaved chunks (gRPC, native WebSocket, AudioHook)."""

    def __init__(self, channels: int, window: int, max_jump: int, max_fill: int = 8000, max_gap: int = 1 << 40) -> None:
        """`max_fill`: holes up to this many frames become zero samples, longer ones Silence; `max_gap`:
        a longer hole is refused."""
        self._channels = channels
        self._buffer: SeqReorderBuffer[np.ndarray] = SeqReorderBuffer(window, max_jump)
        self._max_fill = max_fill
        self._max_gap = max_gap

    @property
    def waiting_chunks(self) -> int:
        return self._buffer.waiting

    def push(self, seq: int, frames: np.ndarray) -> tuple[list, list[Notice]]:
        """Add one decoded chunk; returns what is now in order (sample arrays and Silence) and what to report."""
        deliveries, status = self._buffer.push(seq, frames)
        if len(deliveries) == 1 and status == "accepted" and not isinstance(deliveries[0], Gap):
            return [deliveries[0][1]], []
        out, notices = self._expand(deliveries)
        if status != "accepted":
            notices.append(Notice(status, seq))
        return out, notices

    def flush(self) -> tuple[list, list[Notice]]:
        """Everything still waiting, holes filled."""
        return self._expand(self._buffer.flush())

    def _expand(self, deliveries: list) -> tuple[list, list[Notice]]:
        out: list = []
        notices: list[Notice] = []
        pending_gap: Gap | None = None
        for delivery in deliveries:
            if isinstance(delivery, Gap):
                pending_gap = delivery
                continue
            seq, frames = delivery
            if pending_gap is not None:
                missing = pending_gap.missing * len(frames)
                _check_gap(missing, self._max_gap, f"audio chunk seq={seq}")
                out.append(_silence(missing, self._channels, self._max_fill))
                notices.append(Notice("gap", pending_gap.before_seq, pending_gap.missing, missing))
                pending_gap = None
            out.append(frames)
        return out, notices


@dataclass
class _Track:
    buffer: SeqReorderBuffer
    queued: deque = field(default_factory=deque)  # int16 arrays and ints (runs of silence)
    queued_frames: int = 0  # samples held (silence runs are not held)
    written_end: int = 0  # absolute frame index one past the last frame placed on this track


class TrackIngest:
    """Ordered multi-channel frames from separate mono tracks (Twilio's inbound/outbound).

    Each track is reordered by its own chunk numbers and placed at its start offset when one is
    given (missing audio before it becomes silence; audio overlapping what was placed is dropped).
    Frames are released when every track has them; a track that falls more than `max_skew` frames
    behind the others is padded with silence so that the others are never held back longer.
    Silence is kept as run lengths: where every track is silent, a Silence marker is released
    (zero samples if at most `max_fill` frames), so a timestamp far ahead costs no memory.
    """

    def __init__(self, tracks: int, window: int, max_jump: int, max_skew: int, max_fill: int = 8000,
                 max_gap: int = 1 << 40) -> None:
        self._tracks = [_Track(SeqReorderBuffer(window, max_jump)) for _ in range(tracks)]
        self._max_skew = max_skew
        self._max_fill = max_fill
        self._max_gap = max_gap
        self._released = 0

    @property
    def waiting_chunks(self) -> int:
        return sum(t.buffer.waiting for t in self._tracks)

    @property
    def queued_frames(self) -> int:
        return sum(t.queued_frames for t in self._tracks)

    def push(self, track: int, seq: int, samples: np.ndarray, start_frame: int | None = None) -> tuple[list, list[Notice]]:
        """Add one chunk of one track; returns what is now released (sample arrays and Silence) and what to report."""
        state = self._tracks[track]
        deliveries, status = state.buffer.push(seq, (samples, start_frame))
        notices: list[Notice] = [] if status == "accepted" else [Notice(status, seq, track=track)]
        self._place(track, deliveries, notices)
        return self._release(), notices

    def flush(self) -> tuple[list, list[Notice]]:
        """Everything still waiting; shorter tracks end in silence."""
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
                _check_gap(missing, self._max_gap, f"track {index} chunk {seq}")
                self._pad(state, missing)
                notices.append(Notice("gap", seq, gap.missing if gap else 1, missing, index))
            elif start < state.written_end:
                samples = samples[state.written_end - start :]
            gap = None
            if len(samples):
                state.queued.append(samples)
                state.queued_frames += len(samples)
                state.written_end += len(samples)

    @staticmethod
    def _pad(state: _Track, frames: int) -> None:
        if frames <= 0:
            return
        if state.queued and isinstance(state.queued[-1], int):
            state.queued[-1] += frames
        else:
            state.queued.append(frames)
        state.written_end += frames

    def _release(self) -> list:
        lead = max(t.written_end for t in self._tracks)
        for state in self._tracks:
            if lead - state.written_end > self._max_skew:
                self._pad(state, lead - self._max_skew - state.written_end)
        ready = min(t.written_end for t in self._tracks) - self._released
        out: list = []
        while ready > 0:
            heads = [t.queued[0] for t in self._tracks]
            step = min(ready, *(h if isinstance(h, int) else len(h) for h in heads))
            if all(isinstance(h, int) for h in heads):
                block = _silence(step, len(self._tracks), self._max_fill)
            else:
                block = np.stack([self._take(t, step) if not isinstance(h, int) else np.zeros(step, np.int16)
                                  for t, h in zip(self._tracks, heads)], axis=1)
            for state, head in zip(self._tracks, heads):
                if isinstance(head, int):
                    if head == step:
                        state.queued.popleft()
                    else:
                        state.queued[0] = head - step
            if out and isinstance(block, Silence) and isinstance(out[-1], Silence):
                out[-1] = Silence(out[-1].frames + block.frames)
            else:
                out.append(block)
            ready -= step
            self._released += step
        return out

    @staticmethod
    def _take(state: _Track, frames: int) -> np.ndarray:
        """The next `frames` samples of a track whose head is samples (at least that many)."""
        head = state.queued[0]
        if len(head) == frames:
            state.queued.popleft()
        else:
            state.queued[0] = head[frames:]
            head = head[:frames]
        state.queued_frames -= frames
        return head
