"""One speaker's channel: 20 ms VAD frames at the native rate -> speech segments -> analysis windows.

Segments are never merged: a segment closes after `trailing_silence_ms` of unvoiced audio or at
`max_segment_ms`. The VAD decides every frame as it arrives; the samples go into the ring in pieces of
about a hop (and up to the frame a window is cut at, before it is cut), not frame by frame. While a segment is open, a window of the last `window_ms` of that segment is cut
every `hop_ms` of speech so that a long utterance is scored while it happens; one more window is cut
when the segment closes if enough new speech came since the last one.

What is sent to the model depends on the scoring mode: the whole window (full), or only the speech
that is new since the previous window plus `context_ms` of left context (incremental; the window's
scores are then assembled from the frame-logit track).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import webrtcvad
from webrtcvad import _webrtcvad

from service.audio.ring import SampleRing
from service.config import VadConfig, WindowConfig
from service.domain import Role

_EMPTY = np.zeros(0, dtype=np.int16)
_EMPTY.setflags(write=False)

# The closing window of a segment is cut only if at least this much speech is new since the
# previous window; shorter tails are already represented by the previous window.
MIN_TAIL_MS = 100


@dataclass(frozen=True)
class AnalysisWindow:
    """A span of one speaker's speech to be scored, in native-rate samples from the call start."""

    role: Role
    segment_index: int
    sample_rate: int
    start_sample: int
    """Start of the window the update reports (the last `window_ms` of the segment)."""
    end_sample: int
    encode_from_sample: int
    """Start of the audio sent to the model (= start_sample in full scoring)."""
    new_from_sample: int
    """Start of the audio no earlier window of this segment covered; [new_from, end) is new speech."""
    final: bool
    """The window closes its segment."""
    cut_sample: int
    """Channel position when the window was cut: its end, or the end of the trailing silence that closed the segment."""
    arrival: float
    """time.monotonic() at which the chunk that completed this window arrived."""
    samples: np.ndarray
    """int16 samples [encode_from_sample, end_sample) at the native rate (empty when not scored)."""
    scored: bool = True
    """The speaker's emotion is scored (otherwise the window only carries prosody to the rules)."""
    analytics: Any = None
    """What the session measured over the window when it was cut (prosody, conversation)."""

    @property
    def start_ms(self) -> int:
        return self.start_sample * 1000 // self.sample_rate

    @property
    def end_ms(self) -> int:
        return self.end_sample * 1000 // self.sample_rate

    @property
    def frame_samples(self) -> int:
        """Native samples per 20 ms model frame."""
        return self.sample_rate // 50

    @property
    def new_speech_ms(self) -> int:
        return (self.end_sample - self.new_from_sample) * 1000 // self.sample_rate


class ChannelPipeline:
    """Per-channel VAD segmentation and window scheduling; memory is bounded by the window length."""

    def __init__(self, role: Role, sample_rate: int, vad: VadConfig, windows: WindowConfig, scored: bool = True,
                 keep_frames: bool = False) -> None:
        """`scored`: windows carry their audio for the emotion model; unscored windows are cut on the
        same schedule without audio (for prosody rules). `keep_frames`: keep the decided frames and their
        VAD decisions until `take_frames` (the caller must take them regularly)."""
        self.role = role
        self.sample_rate = sample_rate
        self.scored = scored
        self.carry_audio = False
        """Unscored windows carry their audio too (to be checked for speech), while the owner sets this."""
        self._vad = webrtcvad.Vad(vad.aggressiveness)
        self._frame = sample_rate * vad.frame_ms // 1000
        ms = sample_rate // 1000
        self._start_frames = max(1, vad.start_speech_ms // vad.frame_ms)
        self._trailing_frames = max(1, vad.trailing_silence_ms // vad.frame_ms)
        self._max_segment = vad.max_segment_ms * ms
        self._window = windows.window_ms * ms
        self._hop = windows.hop_ms * ms
        self._min_window = windows.min_window_ms * ms
        self._min_tail = MIN_TAIL_MS * ms
        self._incremental = windows.scoring == "incremental"
        self._context = windows.context_ms * ms
        capacity = self._window + self._hop + (vad.trailing_silence_ms + vad.start_speech_ms) * ms + 2 * self._frame
        self._ring = SampleRing(capacity)
        self._carry = _EMPTY
        self._position = 0  # samples consumed (whole frames): the ring's end plus what waits to go into it
        self._unfilled: list[bytes] = []  # consumed samples not yet in the ring, in order
        self._unfilled_samples = 0
        self._fill_every = max(self._hop, self._frame)
        self._keep = keep_frames
        self._kept: list[bytes] = []  # frames decided since the last take_frames (keep_frames)
        self._voiced = bytearray()
        # segmentation state
        self._in_segment = False
        self._voiced_run = 0
        self._run_start = 0
        self._unvoiced_run = 0
        self._resume = False
        self._seg_start = 0
        self._last_voiced_end = 0
        self._last_window_end = 0
        # totals
        self.segments = 0
        self.speech_samples = 0

    @property
    def position(self) -> int:
        """Samples of this channel consumed by the VAD (whole frames)."""
        return self._position

    @property
    def buffered_samples(self) -> int:
        """Samples held in memory for this channel (bounded, independent of call length)."""
        return self._ring.capacity + len(self._carry) + self._unfilled_samples

    @property
    def kept_frames(self) -> int:
        """Frames decided since the last `take_frames` (with keep_frames)."""
        return len(self._voiced)

    @property
    def speech_ms(self) -> int:
        return self.speech_samples * 1000 // self.sample_rate

    def push(self, samples: np.ndarray, arrival: float) -> list[AnalysisWindow]:
        """Feed int16 samples; returns the windows that became ready."""
        if len(self._carry):
            samples = np.concatenate([self._carry, samples])
        frame = self._frame
        whole = len(samples) - len(samples) % frame
        self._carry = samples[whole:].copy() if whole < len(samples) else _EMPTY
        out: list[AnalysisWindow] = []
        if not whole:
            return out
        # The samples travel as bytes (native-endian int16) until they are needed as an array.
        data = (samples if whole == len(samples) else samples[:whole]).tobytes()
        start = self._position
        self._position = start + whole
        self._unfilled.append(data)
        self._unfilled_samples += whole
        keep = self._keep
        if keep:
            self._kept.append(data)
        width = 2 * frame
        vad, rate, flags, step = self._vad._vad, self.sample_rate, self._voiced, self._step
        for offset in range(0, whole, frame):
            # webrtcvad.Vad.is_speech without its Python wrapper (which only fills in the length).
            voiced = _webrtcvad.process(vad, rate, data if whole == frame else data[offset * 2 : offset * 2 + width], frame)
            if keep:
                flags.append(voiced)
            if voiced or self._in_segment:
                step(voiced, start + offset, start + offset + frame, arrival, out)
            else:  # the common case of the state machine: silence outside speech
                self._voiced_run = 0
                self._resume = False
        if self._unfilled_samples >= self._fill_every or whole >= self._fill_every:
            self._fill_ring(self._position)
        return out

    def take_frames(self) -> tuple[np.ndarray, bytes]:
        """The whole VAD frames decided since the last call (int16 samples) and the VAD decision of each
        (one byte per frame, 1 voiced, 0 not); empty unless the pipeline keeps frames."""
        kept = self._kept
        samples = np.frombuffer(kept[0] if len(kept) == 1 else b"".join(kept), dtype=np.int16) if kept else _EMPTY
        kept.clear()
        voiced = bytes(self._voiced)
        self._voiced.clear()
        return samples, voiced

    def flush(self, arrival: float) -> list[AnalysisWindow]:
        """End of audio: close an open segment (a partial trailing frame is ignored)."""
        out: list[AnalysisWindow] = []
        if self._in_segment:
            self._close(self._position, arrival, out)
        self._carry = _EMPTY
        return out

    def skip(self, samples: int, arrival: float) -> list[AnalysisWindow]:
        """Audio that will never come (a paused or discarded stretch): close any open segment, advance the clock."""
        out = self.flush(arrival)
        self._fill_ring(self._position)
        self._ring.skip(samples)
        self._position = self._ring.end
        self._voiced_run = 0
        self._resume = False
        return out

    def _fill_ring(self, end: int) -> None:
        """Put the consumed samples up to channel position `end` into the ring."""
        count = end - self._ring.end
        if count <= 0:
            return
        unfilled = self._unfilled
        data = np.frombuffer(unfilled[0] if len(unfilled) == 1 else b"".join(unfilled), dtype=np.int16)
        self._ring.append(data[:count])
        unfilled.clear()
        if count < len(data):
            unfilled.append(data[count:].tobytes())
        self._unfilled_samples = len(data) - count

    def _step(self, voiced: bool, frame_start: int, frame_end: int, arrival: float, out: list[AnalysisWindow]) -> None:
        """The segmentation state machine for one frame [frame_start, frame_end) of the channel."""
        if not self._in_segment:
            if not voiced:
                self._voiced_run = 0
                self._resume = False
                return
            if self._voiced_run == 0:
                self._run_start = frame_start
            self._voiced_run += 1
            if self._voiced_run >= self._start_frames or self._resume:
                self._in_segment = True
                self._resume = False
                self._seg_start = self._run_start
                self._last_window_end = self._seg_start
                self._last_voiced_end = frame_end
                self._unvoiced_run = 0
                self._maybe_window(frame_end, arrival, out)
            return
        if voiced:
            self._last_voiced_end = frame_end
            self._unvoiced_run = 0
            self._maybe_window(frame_end, arrival, out)
        else:
            self._unvoiced_run += 1
            if self._unvoiced_run >= self._trailing_frames:
                self._close(frame_end, arrival, out)
                return
        if frame_end - self._seg_start >= self._max_segment:
            self._close(frame_end, arrival, out)
            self._resume = True  # speech that goes on opens the next segment at its first voiced frame

    def _maybe_window(self, position: int, arrival: float, out: list[AnalysisWindow]) -> None:
        end = self._last_voiced_end
        if end - self._last_window_end >= self._hop and end - self._seg_start >= self._min_window:
            out.append(self._cut(end, position, final=False, arrival=arrival))

    def _close(self, position: int, arrival: float, out: list[AnalysisWindow]) -> None:
        end = self._last_voiced_end
        length = end - self._seg_start
        new = end - self._last_window_end
        if length >= self._min_window and (new >= self._min_tail or self._last_window_end == self._seg_start):
            out.append(self._cut(end, position, final=True, arrival=arrival))
        self.segments += 1
        self.speech_samples += length
        self._in_segment = False
        self._voiced_run = 0
        self._unvoiced_run = 0

    def _cut(self, end: int, position: int, final: bool, arrival: float) -> AnalysisWindow:
        """The window ending at sample `end`, cut when the channel has consumed `position` samples."""
        self._fill_ring(position)
        start = max(self._seg_start, end - self._window)
        new_from = max(start, self._last_window_end)
        encode_from = max(self._seg_start, new_from - self._context) if self._incremental else start
        window = AnalysisWindow(
            role=self.role,
            segment_index=self.segments,
            sample_rate=self.sample_rate,
            start_sample=start,
            end_sample=end,
            encode_from_sample=encode_from,
            new_from_sample=new_from,
            final=final,
            cut_sample=position,
            arrival=arrival,
            samples=self._ring.slice(encode_from, end) if self.scored or self.carry_audio else np.zeros(0, dtype=np.int16),
            scored=self.scored,
        )
        self._last_window_end = end
        return window
