"""A call's audio on arrival: chunk size limit, decoding, reordering and holes, queued as ordered blocks that
the session works through a slice at a time; and how much real audio came in (for pacing).

Whatever a message claims (a timestamp hours ahead, a seq jump with the largest chunks, days of
discarded audio), what is queued is bounded: the samples of at most `reorder_window` + 1 chunks per
track, plus holes kept as lengths (`Silence`). Holes longer than `max_gap_s` are refused.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from service.audio.codecs import decode
from service.audio.ingest import InterleavedIngest, Notice, Silence, TrackIngest
from service.config import IngestConfig
from service.domain import AudioFormat, Encoding
from service.errors import InvalidArgument

_PCM16 = np.dtype("<i2")
_NATIVE_PCM16 = _PCM16 == np.dtype(np.int16)  # little-endian host: the wire samples are int16 as they are
TRACK_SKEW_MS = 200  # a separate track this far behind the others is padded with silence


class CallIntake:
    """Turns a call's chunks into an ordered queue of (block, arrival) pairs; a block is an int16
    (frames, channels) array or a Silence marker."""

    def __init__(self, fmt: AudioFormat, config: IngestConfig) -> None:
        self._format = fmt
        self._track_format = AudioFormat(fmt.encoding, fmt.sample_rate, fmt.channel_roles[:1])
        self._frame_bytes = fmt.frame_bytes
        self._track_frame_bytes = self._track_format.frame_bytes
        self._config = config
        rate = fmt.sample_rate
        self._max_fill = config.max_fill_ms * rate // 1000
        self.max_gap = int(config.max_gap_s * rate)
        """Longest hole (in frames) a call may have."""
        self._ingest: InterleavedIngest | TrackIngest | None = None
        self._queue: deque[tuple[np.ndarray | Silence, float]] = deque()
        self.queued_samples = 0
        """Frames of real (array) audio waiting to be worked through."""
        self.received_frames = 0
        """Frames of audio that actually arrived (holes not counted): what pacing measures."""

    def __bool__(self) -> bool:
        return bool(self._queue)

    @property
    def waiting_chunks(self) -> int:
        return self._ingest.waiting_chunks if self._ingest else 0

    @property
    def track_frames(self) -> int:
        return self._ingest.queued_frames if isinstance(self._ingest, TrackIngest) else 0

    def interleaved(self, seq: int, data: bytes, arrival: float) -> list[Notice]:
        """Queue one interleaved chunk. Raises InvalidArgument (changing nothing) for a bad chunk."""
        frames = self._decode(seq, data, self._format, self._frame_bytes)
        if self._ingest is None:
            self._ingest = InterleavedIngest(self._format.channels, self._config.reorder_window, self._config.max_seq_jump,
                                             self._max_fill, self.max_gap)
        elif not isinstance(self._ingest, InterleavedIngest):
            raise InvalidArgument("this call sends separate tracks; interleaved audio cannot be mixed in")
        blocks, notices = self._ingest.push(seq, frames)
        self.received_frames += len(frames)
        self._enqueue(blocks, arrival)
        return notices

    def track(self, track: int, seq: int, data: bytes, arrival: float, start_ms: int | None = None) -> list[Notice]:
        """Queue one chunk of one mono track (track i is channel i), placed at `start_ms` when given."""
        fmt = self._format
        if not 0 <= track < fmt.channels:
            raise InvalidArgument(f"track {track} does not exist (the call has {fmt.channels})")
        samples = self._decode(seq, data, self._track_format, self._track_frame_bytes)[:, 0]
        if self._ingest is None:
            skew = TRACK_SKEW_MS * fmt.sample_rate // 1000
            self._ingest = TrackIngest(fmt.channels, self._config.reorder_window, self._config.max_seq_jump, skew,
                                       self._max_fill, self.max_gap)
        elif not isinstance(self._ingest, TrackIngest):
            raise InvalidArgument("this call sends interleaved audio; separate tracks cannot be mixed in")
        start = None if start_ms is None else start_ms * fmt.sample_rate // 1000
        blocks, notices = self._ingest.push(track, seq, samples, start)
        self.received_frames += len(samples)
        self._enqueue(blocks, arrival)
        return notices

    def skip(self, duration_ms: int, arrival: float) -> int:
        """Queue a stretch of audio that will never come (discarded while paused); returns its frames."""
        if duration_ms < 0:
            raise InvalidArgument(f"cannot skip a negative duration ({duration_ms} ms)")
        frames = duration_ms * self._format.sample_rate // 1000
        if frames > self.max_gap:
            raise InvalidArgument(f"{duration_ms} ms of discarded audio is more than the {self._config.max_gap_s:g} s "
                                  "a call may skip at once (max_gap_s)")
        if frames:
            self._queue.append((Silence(frames), arrival))
        return frames

    def flush(self, arrival: float) -> list[Notice]:
        """End of input: queue what still waits behind holes."""
        if self._ingest is None:
            return []
        blocks, notices = self._ingest.flush()
        self._enqueue(blocks, arrival)
        return notices

    def take(self, max_frames: int) -> tuple[np.ndarray | Silence, float] | None:
        """The next block: a hole, or the audio queued up to the next hole joined into one array of at most
        `max_frames` frames (the rest stays first in line), with the arrival of its first chunk (so a latency measured
        from it is never shorter than the audio's)."""
        if not self._queue:
            return None
        block, arrival = self._queue[0]
        if type(block) is Silence:
            self._queue.popleft()
            return block, arrival
        parts: list[np.ndarray] = []
        room = max_frames
        queue = self._queue
        while queue and room > 0:
            block = queue[0][0]
            if type(block) is Silence:
                break
            if len(block) <= room:
                queue.popleft()
            else:
                queue[0] = (block[room:], queue[0][1])
                block = block[:room]
            parts.append(block)
            room -= len(block)
        block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self.queued_samples -= len(block)
        return block, arrival

    def _enqueue(self, blocks: list, arrival: float) -> None:
        for block in blocks:
            if type(block) is not Silence:
                if not len(block):
                    continue
                self.queued_samples += len(block)
            self._queue.append((block, arrival))

    def _decode(self, seq: int, data: bytes, fmt: AudioFormat, frame_bytes: int) -> np.ndarray:
        limit = self._config.max_chunk_bytes
        if len(data) > limit:
            raise InvalidArgument(f"audio chunk seq={seq} is {len(data)} bytes; the limit is {limit} bytes")
        if fmt.encoding is Encoding.PCM16LE and not len(data) % frame_bytes:  # decode()'s PCM path, inlined
            samples = np.frombuffer(data, dtype=_PCM16)
            if not _NATIVE_PCM16:
                samples = samples.astype(np.int16)
            return samples.reshape(-1, frame_bytes // 2)
        try:
            return decode(fmt, data)
        except InvalidArgument as exc:
            raise InvalidArgument(f"audio chunk seq={seq}: {exc}") from None
