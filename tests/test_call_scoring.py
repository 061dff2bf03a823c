"""CallScoring on its own: what a call sends to the model, what it sheds when live, and the order its outcomes come back."""

from __future__ import annotations

import asyncio
import concurrent.futures

import numpy as np
import pytest

from service.analytics.prosody import ProsodyFigures
from service.audio.channel import AnalysisWindow
from service.call_analytics import WindowAnalytics
from service.call_scoring import CallScoring
from service.config import WindowConfig
from service.domain import EmotionUpdate, Role, Warning
from service.inference.base import NotSpeech, StreamSpan, WindowScores
from service.inference.batcher import QueueFull
from service.inference.scoring import ScoringClient
from tests.fakes import LABELS, one_hot

RATE = 16000
FRAME = RATE // 50


class FakeHeldScoringClient(ScoringClient):
    """FAKE scoring client: keeps every window's future pending until the test resolves it; `full` refuses windows."""

    name = "FAKE held"
    labels = LABELS

    def __init__(self) -> None:
        self.submitted: list[tuple[np.ndarray, float | None, StreamSpan | None, concurrent.futures.Future]] = []
        self.full = False

    def submit(self, audio, deadline=None, span=None) -> concurrent.futures.Future:
        if self.full:
            raise QueueFull("FAKE queue full")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.submitted.append((audio, deadline, span, future))
        return future


def _window(start_s: float, end_s: float, encode_from_s: float, new_from_s: float, segment: int = 0) -> AnalysisWindow:
    start, end, encode_from = int(start_s * RATE), int(end_s * RATE), int(encode_from_s * RATE)
    figures = ProsodyFigures(-20.0, None, 180.0, None, None, int((end_s - new_from_s) * 1000), 0)
    return AnalysisWindow(
        role=Role.CUSTOMER, segment_index=segment, sample_rate=RATE, start_sample=start, end_sample=end,
        encode_from_sample=encode_from, new_from_sample=int(new_from_s * RATE), final=False, cut_sample=end,
        arrival=1e12, samples=np.full(end - encode_from, 1000, np.int16), analytics=WindowAnalytics(figures, None, 0),
    )


def _scores(audio: np.ndarray, label: str = "angry") -> WindowScores:
    frames = len(audio) // FRAME
    logits = np.tile(np.log(one_hot(label)), (frames, 1)).astype(np.float32)
    return WindowScores(one_hot(label), logits)


class _Recorder:
    """The session's side: every evaluate, answer and event in the order they came."""

    def __init__(self) -> None:
        self.evaluated: list[tuple[AnalysisWindow, dict | None, bool]] = []
        self.answers: list[tuple[AnalysisWindow, bool | None]] = []
        self.events: list = []

    def evaluate(self, window, scores, degraded, heard=True) -> None:
        self.evaluated.append((window, scores, heard))

    def answered(self, window, speech) -> None:
        self.answers.append((window, speech))


def _scoring(client: ScoringClient, realtime: bool, recorder: _Recorder) -> CallScoring:
    return CallScoring((Role.CUSTOMER,), {Role.CUSTOMER: 1}, client, WindowConfig(), LABELS, 1.0, realtime,
                       evaluate=recorder.evaluate, answered=recorder.answered, emit=recorder.events.append)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_live_window_replacing_one_still_waiting_carries_its_audio_and_the_old_one_counts_as_merged():
    """A live window cut while the previous one still waits for the model withdraws it and is scored over both windows'
    new audio; the rules see one window and the summary counts one merged, none dropped."""
    client, recorder = FakeHeldScoringClient(), _Recorder()
    scoring = _scoring(client, realtime=True, recorder=recorder)
    scoring.start()
    first, second = _window(0.0, 1.0, 0.0, 0.0), _window(0.0, 1.5, 0.5, 1.0)
    scoring.enqueue(first)
    scoring.submit_ready()
    scoring.enqueue(second)
    scoring.submit_ready()
    assert len(client.submitted) == 2 and client.submitted[0][3].cancelled()
    audio = client.submitted[1][0]
    assert len(audio) == int(1.5 * RATE)  # the withdrawn window's new audio travels with the newer one
    client.submitted[1][3].set_result(_scores(audio))
    scoring.ending()
    await asyncio.wait_for(scoring.drain(), 5)
    assert [(w.end_sample, s is not None) for w, s, _ in recorder.evaluated] == [(second.end_sample, True)]
    timeline = scoring.timeline(Role.CUSTOMER)
    assert timeline.windows_merged == 1 and timeline.windows_dropped == 0
    assert [type(e) for e in recorder.events] == [EmotionUpdate]
    assert [(w.end_sample, w.encode_from_sample, a) for w, a in recorder.answers] == [(second.end_sample, 0, True)]


async def test_a_skipped_window_reaches_the_rules_after_the_window_being_scored_before_it():
    """A window the model will not see waits behind the speaker's window that is being scored, so the rules see the
    speaker's windows in the order they were cut."""
    client, recorder = FakeHeldScoringClient(), _Recorder()
    scoring = _scoring(client, realtime=False, recorder=recorder)
    scoring.start()
    scored, skipped = _window(0.0, 1.0, 0.0, 0.0), _window(0.5, 1.5, 0.5, 1.0)
    scoring.enqueue(scored)
    scoring.submit_ready()
    scoring.skip(skipped, "skipped_no_speech")
    scoring.submit_ready()
    await _settle()
    assert recorder.evaluated == []  # the skipped window waits for the scored one
    client.submitted[0][3].set_result(_scores(client.submitted[0][0]))
    scoring.ending()
    await asyncio.wait_for(scoring.drain(), 5)
    assert [(w.end_sample, s is not None) for w, s, _ in recorder.evaluated] == [(scored.end_sample, True), (skipped.end_sample, False)]
    assert scoring.skipped_windows(Role.CUSTOMER) == 1


async def test_a_window_skipped_as_steady_sound_reaches_the_rules_without_prosody_and_one_without_speech_with_it():
    """A window skipped as mostly a tone or music (not heard) is no speech to the rules, at once or behind a window being
    scored; a window skipped for holding none of the speaker's speech keeps its prosody."""
    client, recorder = FakeHeldScoringClient(), _Recorder()
    scoring = _scoring(client, realtime=False, recorder=recorder)
    scoring.start()
    windows = [_window(0.0, 1.0, 0.0, 0.0), _window(0.5, 1.5, 0.5, 1.0), _window(1.0, 2.0, 1.0, 1.5), _window(1.5, 2.5, 1.5, 2.0)]
    scoring.skip(windows[0], "skipped_steady_sound", heard=False)
    scoring.skip(windows[1], "skipped_no_speech")
    scoring.enqueue(windows[2])
    scoring.submit_ready()
    scoring.skip(windows[3], "skipped_steady_sound", heard=False)
    client.submitted[0][3].set_result(_scores(client.submitted[0][0]))
    scoring.ending()
    await asyncio.wait_for(scoring.drain(), 5)
    assert [(w.end_sample, s is not None, heard) for w, s, heard in recorder.evaluated] == [
        (windows[0].end_sample, False, False), (windows[1].end_sample, False, True), (windows[2].end_sample, True, True),
        (windows[3].end_sample, False, False)]
    assert scoring.skipped_windows(Role.CUSTOMER) == 3


async def test_a_full_queue_drops_a_live_window_once_warned_while_a_replay_keeps_it_for_later():
    """With the model's queue full a live window is dropped (counted, answered None, one WINDOWS_DROPPED warning for
    the run of drops) and a replay's window stays ready until there is room."""
    client, recorder = FakeHeldScoringClient(), _Recorder()
    client.full = True
    live = _scoring(client, realtime=True, recorder=recorder)
    for end in (1.0, 1.5):
        live.enqueue(_window(0.0, end, 0.0, end - 0.5))
        live.submit_ready()
    assert live.timeline(Role.CUSTOMER).windows_dropped == 2 and not live.has_ready
    assert [a for _, a in recorder.answers] == [None, None]
    assert [e.code for e in recorder.events if isinstance(e, Warning)] == ["WINDOWS_DROPPED"]

    replay_recorder = _Recorder()
    replay = _scoring(client, realtime=False, recorder=replay_recorder)
    replay.enqueue(_window(0.0, 1.0, 0.0, 0.0))
    replay.submit_ready()
    assert replay.has_ready and replay.timeline(Role.CUSTOMER).windows_dropped == 0 and replay_recorder.answers == []
    client.full = False
    replay.submit_ready()
    assert not replay.has_ready and len(client.submitted) == 1


async def test_a_window_the_speech_check_found_not_to_be_speech_reaches_the_rules_without_prosody():
    """A NotSpeech answer skips the window (no update), the rules see it as not heard, and the answer reaches the
    session's latch."""
    client, recorder = FakeHeldScoringClient(), _Recorder()
    scoring = _scoring(client, realtime=True, recorder=recorder)
    scoring.start()
    window = _window(0.0, 1.0, 0.0, 0.0)
    scoring.enqueue(window)
    scoring.submit_ready()
    client.submitted[0][3].set_result(NotSpeech(0.0))
    scoring.ending()
    await asyncio.wait_for(scoring.drain(), 5)
    assert [(s, heard) for _, s, heard in recorder.evaluated] == [(None, False)]
    assert recorder.answers == [(window, False)] and recorder.events == []
    assert scoring.not_speech_windows(Role.CUSTOMER) == 1 and scoring.skipped_windows(Role.CUSTOMER) == 1


async def test_closing_withdraws_the_windows_waiting_for_the_model_and_ignores_later_check_answers():
    """After close, a window still waiting is withdrawn from the model and a speech check answering late changes
    nothing."""
    client, recorder = FakeHeldScoringClient(), _Recorder()
    scoring = _scoring(client, realtime=True, recorder=recorder)
    scoring.start()
    scoring.enqueue(_window(0.0, 1.0, 0.0, 0.0))
    scoring.submit_ready()
    unscored = _window(0.0, 1.0, 0.0, 0.0)
    scoring.check(unscored)
    assert client.submitted[1][2].check_only
    scoring.close()
    await _settle()
    assert client.submitted[0][3].cancelled()
    client.submitted[1][3].set_result(NotSpeech(0.0))
    await _settle()
    assert recorder.answers == [] and scoring.not_speech_windows(Role.CUSTOMER) == 0


@pytest.mark.parametrize("realtime", [True, False])
async def test_a_replay_waits_for_room_and_a_live_window_keeps_its_deadline(realtime):
    """A live window goes to the model with its deadline (arrival + deadline_s); a replay's has none and
    `wait_for_room` returns only once fewer windows than the limit are out."""
    client, recorder = FakeHeldScoringClient(), _Recorder()
    scoring = _scoring(client, realtime=realtime, recorder=recorder)
    scoring.start()
    window = _window(0.0, 1.0, 0.0, 0.0)
    scoring.enqueue(window)
    waiting = asyncio.ensure_future(scoring.wait_for_room(1))
    await _settle()
    assert len(client.submitted) == 1
    assert client.submitted[0][1] == (window.arrival + 1.0 if realtime else None)
    assert not waiting.done()
    client.submitted[0][3].set_result(_scores(client.submitted[0][0]))
    assert await asyncio.wait_for(waiting, 5) is True
    scoring.close()
