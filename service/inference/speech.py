"""Is a window speech? silero-vad's pretrained detector in the model engine, batched across calls, before the emotion model.

The steady-sound gate (service/analytics/gate.py) runs on every frame of every call and takes tones and most
music out before anything counts as talk, but it leaves some music as speech (18.9% of the voiced frames of
the Debian game music in `python -m clients.eval_signal`). silero-vad (its weights ship in its wheel, MIT
licence) calls 1.7% of those frames speech, but it loses word edges when run frame by frame on 32 ms chunks
(84.6% of the speech clips' voiced frames kept), so it does not decide talk time: it runs here, once per scored
window, on the 16 kHz audio the emotion model would get, and a window in which less than `min_share` of the
32 ms chunks are speech is answered NotSpeech instead of being scored (the session counts it as not speech,
no update, no emotion alert).

silero-vad is a recurrent network that needs a second or more of a channel's audio before its answers settle:
started afresh on every 1 s window it missed speech that it found when run over the whole channel. So the
detector keeps each channel's recurrent state (a StreamSpan names the channel and where the window lies in it):
a window runs only its audio the channel's earlier windows did not cover, from the state they left, and its share
is read over all its chunks, the earlier ones from the channel's recent answers. Audio between two windows that
no window carried (silence, the other side talking) is skipped: the state goes on from where it was. A window
without a span runs alone from a fresh state. Carried on for good, though, the state keeps hearing speech in music
that follows speech at once (on some real music for as long as it plays, where run afresh it hears none). With
`refresh_s` set, a channel's state that hears speech starts afresh once it has run that long, warmed up on the
window's audio before its new part (a state that hears no speech is left as it is: on music it is steadier than a
fresh one). Off by default: a fresh state misses some narrowband speech that the carried one hears (README "The
engine's speech check" has the figures both ways).

The windows of a batch are grouped by how many new 512-sample chunks they bring; each group runs through the
detector as one batch of rows (each chunk with the 64 samples before it, as silero-vad's own wrapper feeds it),
each row with its channel's state: the network's stateless front and head over all chunks at once, its LSTM cell
chunk by chunk.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np

from service.inference.base import MODEL_SAMPLE_RATE, EmotionModel, NotSpeech, Spoken, StreamSpan, WindowScores

log = logging.getLogger(__name__)

CHUNK = 512
"""Samples per detector step at 16 kHz (32 ms): what silero-vad takes at that rate."""
CONTEXT = 64
"""Samples before each chunk that silero-vad's 16 kHz network sees with it."""
SPEECH_PROBABILITY = 0.5
"""A chunk whose speech probability is at least this is speech (silero-vad's own default)."""
HISTORY_CHUNKS = 160
"""Answers kept per channel (5.1 s): more than a window and its left context, so a window's earlier chunks are known."""
MAX_STREAMS = 20_000
"""Channels whose state is kept; past it the least recently used is forgotten (it starts afresh if it comes back)."""
STREAM_IDLE_S = 300.0
"""A channel with no window for this long is forgotten (its call has most likely ended)."""
REFRESH_S = 0.0
"""A channel's state that hears speech is started afresh once it has run this long since it last was (0: never):
carried on for good, speech leaves silero-vad hearing speech in music that follows it at once, for seconds and on some
music for as long as it plays; started afresh, it misses some narrowband speech (README "The engine's speech check")."""
REFRESH_LOOK = 8
"""A state is refreshed only while one of the channel's last this many chunks (256 ms) was heard as speech."""
WARM_UP_MAX = 16
"""At most this many chunks (0.5 s) of a window's audio before its new part warm a fresh state up."""


@dataclass
class _Stream:
    """One channel's detector state."""

    state: object
    """silero-vad's recurrent state for this channel, (2, 128) on the detector's device."""
    context: np.ndarray
    """The 64 samples before `position`."""
    position: int
    """Where the channel's next unseen chunk starts (16 kHz samples)."""
    used: float
    answers: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY_CHUNKS))
    """(chunk start, speech probability) of the channel's latest chunks, oldest first."""
    since_fresh: int = 0
    """Samples run since the state was last started afresh."""


@dataclass
class _Plan:
    """What one window runs: `chunks` new chunks from `offset` in its audio."""

    index: int
    stream: _Stream | None
    start: int
    offset: int
    chunks: int
    context: np.ndarray
    warm_up: int = 0
    """Leading chunks run only to warm a fresh state up (audio the channel's earlier windows answered for already)."""


class SpeechDetector:
    """silero-vad over windows: the share of each window's 32 ms chunks that are speech, carrying each channel's
    state from one of its windows to the next."""

    def __init__(self, device: str = "cpu", max_streams: int = MAX_STREAMS, idle_s: float = STREAM_IDLE_S,
                 split: bool = True, refresh_s: float = REFRESH_S) -> None:
        """`split`: run the network's stateless parts once over all chunks and only its recurrent cell chunk by chunk
        (silero-vad 6's network; where its parts are not found, or with False, the whole network runs step by step).
        `refresh_s`: start a channel's state afresh once it has run this long while it hears speech (0: never),
        warmed up on the audio its window holds before the new part (the left context)."""
        if refresh_s < 0:
            raise ValueError(f"refresh_s must be >= 0, got {refresh_s}")
        self.refresh_samples = int(refresh_s * MODEL_SAMPLE_RATE)
        import torch
        from silero_vad import load_silero_vad

        self._torch = torch
        self.device = device
        wrapper = load_silero_vad(onnx=False).to(device)
        wrapper.eval()
        # The wrapper keeps one state for one batch of streams; its 16 kHz network takes (chunk with context, state)
        # and returns (probability, state), which lets every row of a batch carry its own channel's state.
        self._net = wrapper._model
        self._fresh = torch.zeros(2, 128, device=device)
        self._streams: collections.OrderedDict[Hashable, _Stream] = collections.OrderedDict()
        self.max_streams = max_streams
        self.idle_s = idle_s
        decoder = getattr(self._net, "decoder", None)
        laid_out = hasattr(self._net, "encoder") and hasattr(self._net, "run_extractors") and hasattr(decoder, "rnn") \
            and hasattr(decoder, "decoder")
        self.split = split and laid_out
        if split and not self.split:
            log.warning("silero-vad's network is not laid out as expected: the speech check runs it whole, step by step")

    @property
    def streams(self) -> int:
        """Channels whose state is kept now."""
        return len(self._streams)

    def recent_answers(self, stream: Hashable) -> list[tuple[int, float]]:
        """(chunk start at 16 kHz, speech probability) of a channel's latest chunks, oldest first (HISTORY_CHUNKS of
        them at most; none for a channel not kept)."""
        kept = self._streams.get(stream)
        return list(kept.answers) if kept is not None else []

    def speech_shares(self, windows: Sequence[np.ndarray], spans: Sequence[StreamSpan | None] | None = None) -> list[float]:
        """For each 16 kHz float window, the share of its whole 32 ms chunks that are speech (0.0 for a window
        shorter than one chunk). Windows of one channel are taken in the order given."""
        spans = list(spans) if spans is not None else [None] * len(windows)
        windows = [np.asarray(window, dtype=np.float32) for window in windows]
        if len(spans) != len(windows):
            raise ValueError(f"{len(spans)} spans for {len(windows)} windows")
        now = time.monotonic()
        # A channel's second window in one batch needs the state its first leaves: it goes in the next round.
        rounds: list[list[int]] = []
        seen: dict[Hashable, int] = {}
        for i, span in enumerate(spans):
            r = 0
            if span is not None:
                r = seen.get(span.stream, 0)
                seen[span.stream] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(i)
        shares = [0.0] * len(windows)
        with self._torch.inference_mode():
            for members in rounds:
                self._round(windows, spans, members, shares, now)
        self._forget(now)
        return shares

    def _round(self, windows, spans, members: list[int], shares: list[float], now: float) -> None:
        plans: dict[int, list[_Plan]] = {}
        for i in members:
            plan = self._plan(i, windows[i], spans[i], now)
            if plan.chunks:
                plans.setdefault(plan.chunks, []).append(plan)
        answers: dict[int, np.ndarray] = {}
        for chunks, group in plans.items():
            for plan, speech in zip(group, self._run(windows, group, chunks)):
                answers[plan.index] = speech
        for i in members:
            window, span = windows[i], spans[i]
            end_chunks = len(window) // CHUNK
            if span is None:
                speech = answers.get(i)
                shares[i] = float((speech >= SPEECH_PROBABILITY).mean()) if speech is not None and end_chunks else 0.0
                continue
            stream = self._streams[span.stream]
            last = span.start + len(window) - CHUNK
            known = [p >= SPEECH_PROBABILITY for at, p in stream.answers if span.start <= at <= last]
            shares[i] = float(np.mean(known)) if known else 0.0

    def _plan(self, i: int, window: np.ndarray, span: StreamSpan | None, now: float) -> _Plan:
        if span is None:
            return _Plan(i, None, 0, 0, len(window) // CHUNK, np.zeros(CONTEXT, np.float32))
        stream = self._streams.get(span.stream)
        if stream is None:
            stream = _Stream(self._fresh, np.zeros(CONTEXT, np.float32), span.start, now)
            self._streams[span.stream] = stream
        self._streams.move_to_end(span.stream)
        stream.used = now
        end = span.start + len(window)
        if span.start <= stream.position:  # the window goes on from what the channel's earlier windows covered
            offset = stream.position - span.start
            context = window[offset - CONTEXT:offset] if offset >= CONTEXT else stream.context
        else:  # audio no window carried lies between: go on from the state the channel was left in
            offset, context = 0, np.zeros(CONTEXT, np.float32)
            stream.position = span.start
        chunks = max(0, (end - stream.position) // CHUNK)
        refresh = self.refresh_samples
        if chunks and refresh and stream.since_fresh >= refresh and self._hearing_speech(stream):
            # Start afresh, warmed up on the window's audio before its new part (answered for already: those answers stay).
            warm_up = min(offset // CHUNK, WARM_UP_MAX)
            offset -= warm_up * CHUNK
            context = window[offset - CONTEXT:offset] if offset >= CONTEXT else np.zeros(CONTEXT, np.float32)
            stream.state, stream.since_fresh = self._fresh, 0
            return _Plan(i, stream, stream.position - warm_up * CHUNK, offset, warm_up + chunks, context, warm_up)
        return _Plan(i, stream, stream.position, offset, chunks, context)

    @staticmethod
    def _hearing_speech(stream: _Stream) -> bool:
        """The channel's state hears speech now (one of its last REFRESH_LOOK chunks): what a fresh state is to confirm.
        A state that hears none is left as it is: on music it is steadier than a fresh one."""
        answers = stream.answers
        return any(p >= SPEECH_PROBABILITY for _, p in itertools.islice(reversed(answers), REFRESH_LOOK))

    def _run(self, windows, group: list[_Plan], chunks: int) -> list[np.ndarray]:
        """Each plan's new chunks through the detector from its channel's state: their speech probabilities, (plans,
        chunks); the states and answers are kept."""
        torch = self._torch
        audio = np.stack([windows[p.index][p.offset:p.offset + chunks * CHUNK] for p in group])
        context = np.stack([p.context for p in group])
        x = torch.from_numpy(np.concatenate([context, audio], axis=1)).to(self.device)
        state = torch.stack([p.stream.state if p.stream is not None else self._fresh for p in group], dim=1)
        if self.split:
            probabilities, state = self._split_steps(x, state, chunks)
        else:
            steps = []
            for k in range(chunks):
                out, state = self._net(x[:, k * CHUNK:k * CHUNK + CHUNK + CONTEXT], state)
                steps.append(out.reshape(-1))
            probabilities = torch.stack(steps, dim=1)
        speech = probabilities.float().cpu().numpy()
        for row, plan in enumerate(group):
            stream = plan.stream
            if stream is None:
                continue
            stream.state = state[:, row].clone()
            stream.context = audio[row, -CONTEXT:].copy()
            first = plan.start + plan.warm_up * CHUNK
            stream.answers.extend(zip(range(first, plan.start + chunks * CHUNK, CHUNK), speech[row, plan.warm_up:].tolist()))
            stream.position = plan.start + chunks * CHUNK
            stream.since_fresh += (chunks - plan.warm_up) * CHUNK
        return list(speech)

    def _split_steps(self, x, state, chunks: int):
        """silero-vad's network a part at a time: only its LSTM cell carries state from one chunk to the next, so the
        front (STFT and convolutions) and the head (a 1x1 convolution and a sigmoid) run once over every chunk of
        every row, and only the cell runs chunk by chunk (a third of the CPU time of whole steps here)."""
        torch, net = self._torch, self._net
        rows = x.shape[0]
        frames = x.unfold(1, CHUNK + CONTEXT, CHUNK).reshape(rows * chunks, CHUNK + CONTEXT)
        features = net.encoder(net.run_extractors(frames)).reshape(rows, chunks, -1)
        h, c = state[0], state[1]
        hidden = []
        for k in range(chunks):
            h, c = net.decoder.rnn(features[:, k], (h, c))
            hidden.append(h)
        out = net.decoder.decoder(torch.stack(hidden, dim=1).reshape(rows * chunks, -1, 1))
        return out.reshape(rows, chunks, -1).mean(dim=2), torch.stack([h, c])

    def _forget(self, now: float) -> None:
        streams = self._streams
        while streams:
            key, oldest = next(iter(streams.items()))
            if len(streams) <= self.max_streams and now - oldest.used < self.idle_s:
                return
            del streams[key]


class SpeechCheckedModel(EmotionModel):
    """An EmotionModel whose windows pass the speech detector first: a window with less than `min_share` speech is
    answered NotSpeech and not scored; the others go to `model` in one batch. A detector error scores every window
    (the check is a filter, not a gate the model depends on)."""

    checks_speech = True

    def __init__(self, model: EmotionModel, detector: SpeechDetector, min_share: float) -> None:
        if not 0.0 < min_share <= 1.0:
            raise ValueError(f"min_share must be in (0, 1], got {min_share}")
        self.model = model
        self.detector = detector
        self.min_share = min_share
        self.name = model.name
        self.labels = model.labels

    @property
    def return_embeddings(self) -> bool:  # type: ignore[override]
        return self.model.return_embeddings

    @return_embeddings.setter
    def return_embeddings(self, value: bool) -> None:
        self.model.return_embeddings = value

    def score_batch(self, windows: Sequence[np.ndarray]) -> list[WindowScores | NotSpeech | Exception]:
        return self.score_spans(windows, [None] * len(windows))

    def score_spans(self, windows: Sequence[np.ndarray],
                    spans: Sequence[StreamSpan | None]) -> list[WindowScores | NotSpeech | Spoken | Exception]:
        check_only = [span is not None and span.check_only for span in spans]
        results: list[WindowScores | NotSpeech | Spoken | Exception]
        try:
            shares = self.detector.speech_shares(windows, spans)
        except Exception as exc:  # noqa: BLE001 - a broken detector must not stop scoring
            log.exception("the speech detector failed a batch; its windows are scored unchecked")
            keep = [i for i, only in enumerate(check_only) if not only]
            results = [exc] * len(windows)  # what a window sent only to be checked gets
        else:
            keep = [i for i, share in enumerate(shares) if share >= self.min_share and not check_only[i]]
            results = [Spoken(share) if only and share >= self.min_share else NotSpeech(share) for share, only in zip(shares, check_only)]
        if keep:
            scored = self.model.score_batch([windows[i] for i in keep])
            for i, result in zip(keep, scored):
                results[i] = result
        return results

    def warm_up(self, max_batch: int = 1, cuda_graphs: bool = False) -> None:
        self.detector.speech_shares([np.zeros(MODEL_SAMPLE_RATE, dtype=np.float32)])
        self.model.warm_up(max_batch, cuda_graphs)

    def close(self) -> None:
        self.model.close()
