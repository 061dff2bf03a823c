"""Conversation analytics and rule timing through a real CallSession (VAD, prosody, turn-taking, rules) with a scripted model."""

import asyncio

import numpy as np
import soxr

from clients.wavfile import read_wav
from service.batch import MemorySink
from service.config import AnalyticsConfig, IngestConfig, VadConfig, WindowConfig
from service.domain import Alert, AudioFormat, CallConfig, CallSummary, EmotionUpdate, Encoding, Role, TranscriptSegment, Warning
from service.inference.batcher import InferenceBatcher
from service.inference.scoring import LocalScoringClient
from service.rules import RuleEngine, load_rules, parse_rules
from service.config import DEFAULT_RULES_PATH
from service.session import CallSession, SessionContext
from tests.conftest import CUSTOMER_WAV
from tests.fakes import FakeEmotionModel, one_hot

RATE = 8000
LOUD_RMS = 0.08  # model-input RMS (float audio in -1..1) above which the scripted model says angry


def speech_8k() -> np.ndarray:
    """The customer fixture's utterance at 8 kHz as float32 (about 3.5 s of speech)."""
    speech = read_wav(str(CUSTOMER_WAV)).samples[:, 0].astype(np.float32)
    return soxr.resample(speech, 16000, RATE)


def scripted_model() -> FakeEmotionModel:
    """FAKE model scripted on loudness: loud audio is angry, anything else neutral."""
    def script(audio: np.ndarray) -> np.ndarray:
        rms = float(np.sqrt(np.mean(np.square(audio)))) if len(audio) else 0.0
        return one_hot("angry" if rms > LOUD_RMS else "neutral")
    return FakeEmotionModel(script)


async def run_session(audio: np.ndarray, rules_text: str | None = None, roles=(Role.CUSTOMER,), chunk_ms=100,
                      analytics: AnalyticsConfig = AnalyticsConfig(), score_roles=(Role.CUSTOMER,), transcript=(),
                      warnings: list | None = None, model=None, rule_engine=RuleEngine):
    """Replay int16 audio (frames x channels) through a CallSession (`model`: scripted_model() when None; rules run by
    a `rule_engine`), each transcript segment pushed once the audio it covers was; returns (alerts, updates, summary)
    and collects Warning events into `warnings`."""
    model = model or scripted_model()
    batcher = InferenceBatcher(model, max_batch=8, max_wait_ms=1, queue_size=256)
    batcher.start()
    rules = parse_rules(rules_text) if rules_text else load_rules(DEFAULT_RULES_PATH)
    engine = rule_engine(rules)
    ctx = SessionContext(vad=VadConfig(), windows=WindowConfig(), ingest=IngestConfig(), scorer=LocalScoringClient(model, batcher),
                         rules=lambda: engine, publisher=MemorySink(), model_name=model.name, labels=model.labels,
                         analytics=analytics, speech_check=model.checks_speech)
    call = CallConfig("analytics-1", "a", "t", "", AudioFormat(Encoding.PCM16LE, RATE, roles), score_roles=score_roles,
                      realtime=False)
    session = CallSession(call, ctx)
    session.start()
    alerts, updates, summaries = [], [], []

    async def consume():
        async for event in session.events():
            if isinstance(event, Alert):
                alerts.append(event)
            elif isinstance(event, EmotionUpdate):
                updates.append(event)
            elif isinstance(event, CallSummary):
                summaries.append(event)
            elif isinstance(event, Warning) and warnings is not None:
                warnings.append(event)

    consumer = asyncio.create_task(consume())
    pending = sorted(transcript, key=lambda seg: seg.end_ms)
    try:
        step = RATE * chunk_ms // 1000
        for seq, offset in enumerate(range(0, len(audio), step)):
            session.push_audio(seq, audio[offset:offset + step].astype("<i2").tobytes())
            while pending and pending[0].end_ms <= (offset + step) * 1000 // RATE:
                session.push_transcript(pending.pop(0))
            await session.flow_control()
        await session.finish()
        await consumer
    finally:
        batcher.stop()
    return alerts, updates, summaries[0]


def _int16(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -32768, 32767).astype(np.int16)


async def test_raised_voice_fires_after_the_baseline_warm_up_and_three_seconds_louder():
    """A customer who speaks 12 s at one level and then 14 dB louder gets the raised-voice alert about 3 s of speech into
    the loud part, the angry+fast alert only once the scripted model hears anger, and nothing while the level is steady."""
    speech = speech_8k()
    pause = np.zeros(RATE // 2, np.float32)
    quiet = np.concatenate([np.concatenate([speech * 0.2, pause]) for _ in range(4)])
    loud = np.concatenate([np.concatenate([speech * 1.0, pause]) for _ in range(2)])
    audio = _int16(np.concatenate([quiet, loud]))[:, None]
    loud_start_ms = len(quiet) * 1000 // RATE
    alerts, updates, summary = await run_session(audio)

    assert all(a.fired_ms > loud_start_ms for a in alerts), [(a.rule_id, a.fired_ms) for a in alerts]
    raised = [a for a in alerts if a.rule_id == "customer-raised-voice"]
    assert len(raised) == 1
    evidence = raised[0].document["evidence"]
    assert evidence["conditions"][0]["held_ms"] >= 3000 and evidence["conditions"][0]["value"] >= 10
    assert loud_start_ms + 3000 - 40 <= raised[0].fired_ms <= loud_start_ms + 5500  # VAD frames are on a 20 ms grid
    assert "dB over the speaker's baseline over 3." in evidence["reason"]
    quiet_updates = [u for u in updates if u.window_end_ms < loud_start_ms]
    assert quiet_updates and all(u.top_label == "neutral" for u in quiet_updates)
    # steady speech reads near 0 dB over its own baseline (a segment's closing window measures only its fading tail)
    warm = [u for u in quiet_updates if u.loudness_over_baseline_db is not None and not u.segment_final]
    assert warm and all(abs(u.loudness_over_baseline_db) < 4 for u in warm)
    assert all(u.speech_rate_spm is None or 100 < u.speech_rate_spm < 480 for u in updates)  # espeak at 185 wpm is dense
    customer = summary.document["speakers"][0]
    assert customer["prosody"]["baseline_dbfs"] is not None and customer["prosody"]["pitch_hz"] > 60


async def test_dead_air_fires_at_five_seconds_of_mutual_silence():
    """Six seconds in which neither channel speaks fires dead-air once, five seconds after the last speech ends."""
    speech = _int16(speech_8k())
    silence = np.zeros(RATE * 6, np.int16)
    customer = np.concatenate([speech, silence, np.zeros(len(speech), np.int16)])
    agent = np.concatenate([np.zeros(len(speech) + len(silence), np.int16), speech])
    alerts, _, summary = await run_session(np.stack([customer, agent], axis=1), roles=(Role.CUSTOMER, Role.AGENT))
    dead = [a for a in alerts if a.rule_id == "dead-air"]
    assert len(dead) == 1 and dead[0].speaker is None and dead[0].notify == ("agent",)
    silence_start = dead[0].start_ms
    speech_end_ms = len(speech) * 1000 // RATE
    assert speech_end_ms - 800 <= silence_start <= speech_end_ms + 300  # trailing silence inside the fixture counts
    assert 5000 <= dead[0].fired_ms - silence_start < 5100  # conversation rules run every 100 ms of call time
    listed = summary.document["conversation"]["silences"]
    assert any(abs(s["start_ms"] - silence_start) <= 20 and s["duration_ms"] >= 5500 for s in listed)


async def test_a_click_in_a_silence_leaves_one_silence_and_dead_air_still_fires():
    """A mono call with a 6.7 s silence and a 200 ms noise burst 2.4 s into it (voiced to webrtcvad): dead-air fires once
    and the summary lists one silence of the whole length; with min_speech_ms 0 the burst splits the silence and the
    rule misses it."""
    speech = _int16(speech_8k())
    rng = np.random.default_rng(3)
    click = np.clip(rng.normal(0, 6000, int(0.2 * RATE)), -32768, 32767).astype(np.int16)
    silence = np.concatenate([np.zeros(int(2.4 * RATE), np.int16), click, np.zeros(int(4.1 * RATE), np.int16)])
    mono = np.concatenate([speech, silence, speech])[:, None]
    alerts, _, summary = await run_session(mono)
    dead = [a for a in alerts if a.rule_id == "dead-air"]
    listed = summary.document["conversation"]["silences"]
    assert len(dead) == 1 and any(s["duration_ms"] >= 6500 for s in listed), listed
    alerts, _, summary = await run_session(mono, analytics=AnalyticsConfig(min_speech_ms=0))
    assert not [a for a in alerts if a.rule_id == "dead-air"]
    assert all(s["duration_ms"] < 5000 for s in summary.document["conversation"]["silences"])


async def test_agent_talking_over_the_customer_three_times_alerts_the_supervisor():
    """Three times the agent starts talking 1 s into the customer's speech and both go on: one supervisor alert, with who
    interrupted whom in the evidence and the summary."""
    speech = _int16(speech_8k())
    n = len(speech)
    gap = np.zeros(RATE * 2, np.int16)
    customer, agent = [], []
    for _ in range(3):
        customer += [speech, gap]
        agent += [np.zeros(RATE, np.int16), speech[: n - RATE], gap]
    audio = np.stack([np.concatenate(customer), np.concatenate(agent)], axis=1)
    alerts, _, summary = await run_session(audio, roles=(Role.CUSTOMER, Role.AGENT))
    over = [a for a in alerts if a.rule_id == "agent-talks-over-customer"]
    assert len(over) == 1 and over[0].speaker is Role.AGENT and over[0].notify == ("supervisor",)
    events = over[0].document["evidence"]["conditions"][0]["events"]
    assert len(events) == 3 and all(e["by"] == "agent" and e["of"] == "customer" for e in events)
    first_speech = events[0]["at_ms"]
    assert 900 <= first_speech <= 1300
    interruptions = summary.document["conversation"]["interruptions"]
    assert interruptions["by"] == {"customer": 0, "agent": 3}
    assert summary.document["conversation"]["overtalk_ms"] > 3 * 1500


async def test_the_other_side_leaking_into_a_channel_is_neither_over_talk_nor_an_interruption():
    """The customer's voice leaking 30 dB down into the agent's channel (echo) is not the agent speaking: no over-talk,
    no interruption, the leaked speech is counted as crosstalk; with suppression off the same call reads as over-talk."""
    speech = speech_8k()
    gap = np.zeros(RATE * 2, np.float32)
    customer = np.concatenate([speech, gap, speech, gap])
    leak = customer * 10 ** (-30 / 20)
    audio = np.stack([_int16(customer), _int16(leak)], axis=1)
    roles = (Role.CUSTOMER, Role.AGENT)

    _, _, summary = await run_session(audio, roles=roles)
    conversation = summary.document["conversation"]
    assert conversation["overtalk_ms"] == 0 and conversation["interruptions"]["count"] == 0
    agent = next(s for s in summary.document["speakers"] if s["speaker"] == "agent")
    assert agent["crosstalk_ms"] > 1000 and agent["prosody"]["voiced_ms"] == 0

    _, _, unsuppressed = await run_session(audio, roles=roles, analytics=AnalyticsConfig(crosstalk_margin_db=0))
    assert unsuppressed.document["conversation"]["overtalk_ms"] > 1000
    agent = next(s for s in unsuppressed.document["speakers"] if s["speaker"] == "agent")
    assert agent["crosstalk_ms"] == 0 and agent["prosody"]["voiced_ms"] > 1000


async def test_windows_with_none_of_the_speakers_own_speech_are_not_scored():
    """With both channels scored, the agent channel that only carries the customer's voice 30 dB down sends nothing to the
    model (its windows are counted as skipped), while the customer's windows are scored as usual and none is degraded;
    with crosstalk suppression off the leaked voice is scored as the agent's."""
    speech = speech_8k()
    gap = np.zeros(RATE * 2, np.float32)
    customer = np.concatenate([speech, gap, speech, gap])
    audio = np.stack([_int16(customer), _int16(customer * 10 ** (-30 / 20))], axis=1)
    roles = (Role.CUSTOMER, Role.AGENT)

    _, updates, summary = await run_session(audio, roles=roles, score_roles=roles)
    speakers = {s["speaker"]: s for s in summary.document["speakers"]}
    assert speakers["agent"]["windows_scored"] == 0 and speakers["agent"]["windows_skipped"] > 4
    assert speakers["customer"]["windows_scored"] > 4 and speakers["customer"]["windows_skipped"] == 0
    assert updates and all(u.speaker is Role.CUSTOMER and not u.degraded for u in updates)

    _, updates, summary = await run_session(audio, roles=roles, score_roles=roles, analytics=AnalyticsConfig(crosstalk_margin_db=0))
    speakers = {s["speaker"]: s for s in summary.document["speakers"]}
    assert speakers["agent"]["windows_scored"] > 4 and speakers["agent"]["windows_skipped"] == 0
    assert any(u.speaker is Role.AGENT for u in updates)


async def test_a_window_after_skipped_leakage_in_the_same_segment_is_not_degraded():
    """A customer channel that first carries only the agent's voice leaking in and then, without a pause, the customer's
    own speech: the leaked part is skipped and the customer's windows that overlap it are not marked degraded."""
    speech = speech_8k()
    n = len(speech)
    agent = np.concatenate([speech, np.zeros(n, np.float32)])
    customer = np.concatenate([speech * 10 ** (-30 / 20), speech])
    audio = np.stack([_int16(customer), _int16(agent)], axis=1)
    _, updates, summary = await run_session(audio, roles=(Role.CUSTOMER, Role.AGENT))
    customer_doc = next(s for s in summary.document["speakers"] if s["speaker"] == "customer")
    assert customer_doc["windows_skipped"] > 2 and customer_doc["windows_scored"] > 2
    own = [u for u in updates if u.speaker is Role.CUSTOMER]
    assert own and all(u.window_end_ms > n * 1000 // RATE for u in own)
    assert not any(u.degraded for u in own)


class RecordingRuleEngine(RuleEngine):
    """The real rule engine, recording which windows it was given, in order: (speaker, end_ms, scored)."""

    seen: list[tuple[Role, int, bool]] = []

    def evaluate_window(self, state, window):
        RecordingRuleEngine.seen.append((window.speaker, window.end_ms, window.scores is not None))
        return super().evaluate_window(state, window)


async def test_the_rules_see_a_speakers_windows_in_order_when_some_are_not_scored():
    """Speech, a held tone (its windows are not sent to the model) and speech again on the customer's channel, with a
    model slow enough that the speech windows are still being scored when the tone's windows are cut: the rules get
    the customer's windows in the order of their ends, the unscored ones in their place."""
    speech = speech_8k()
    tone = 0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(4 * RATE) / RATE)
    audio = _int16(np.concatenate([speech, tone, speech, np.zeros(RATE, np.float32)]))[:, None]
    slow = FakeEmotionModel(lambda audio: one_hot("neutral"), delay_s=0.25)
    RecordingRuleEngine.seen = []
    await run_session(audio, model=slow, rule_engine=RecordingRuleEngine)
    seen = [(end, scored) for speaker, end, scored in RecordingRuleEngine.seen if speaker is Role.CUSTOMER]
    assert sum(scored for _, scored in seen) > 4 and sum(not scored for _, scored in seen) > 4
    assert [end for end, _ in seen] == sorted(end for end, _ in seen)


async def test_a_quieter_speaker_talking_over_the_other_still_interrupts():
    """An agent 8 dB quieter than the customer who talks into the customer's speech is real over-talk, kept by the
    crosstalk margin: the interruptions are counted as without the level difference."""
    speech = _int16(speech_8k())
    n = len(speech)
    gap = np.zeros(RATE * 2, np.int16)
    customer, agent = [], []
    for _ in range(2):
        customer += [speech, gap]
        agent += [np.zeros(RATE, np.int16), _int16(speech[: n - RATE] * 10 ** (-8 / 20)), gap]
    audio = np.stack([np.concatenate(customer), np.concatenate(agent)], axis=1)
    _, _, summary = await run_session(audio, roles=(Role.CUSTOMER, Role.AGENT))
    assert summary.document["conversation"]["interruptions"]["by"] == {"customer": 0, "agent": 2}


async def test_rule_timing_in_the_pipeline_matches_the_speech():
    """An 'angry for 2 s' rule fires 2 s of loud speech after the loud speech starts, not counting the pauses."""
    speech = speech_8k()
    audio = _int16(np.concatenate([speech * 0.1, np.zeros(RATE, np.float32), speech]))[:, None]
    rules = "rules:\n  - id: angry2\n    speaker: customer\n    all: [{emotion: [angry], min: 0.6, for: 2s}]\n"
    alerts, updates, _ = await run_session(audio, rules)
    loud_updates = [u for u in updates if u.top_label == "angry"]
    assert len(alerts) == 1 and loud_updates
    first_loud = min(u.window_end_ms for u in loud_updates)
    assert alerts[0].start_ms <= first_loud
    assert 2000 <= alerts[0].fired_ms - alerts[0].start_ms <= 2600
    assert alerts[0].start_ms >= (len(speech) + RATE) * 1000 // RATE - 200


TRANSCRIPT_RULE = """
rules:
  - id: fast-talker
    speaker: customer
    speech_rate_cpm: {gt: 700}
    notify: [agent]
"""


async def test_a_transcript_gives_windows_a_speech_rate_in_characters_and_a_rule_can_use_it():
    """Transcript segments pushed beside the audio give later windows their characters per minute (60 characters in
    2 s of transcribed speech = 1800/min, over the rule's 700), fire a speech_rate_cpm rule with that reason, and
    reach the summary's totals; a segment for a speaker without a channel is refused with a warning."""
    speech = speech_8k()
    audio = _int16(np.concatenate([speech, np.zeros(RATE, np.float32), speech, np.zeros(RATE, np.float32)]))[:, None]
    n_ms = len(speech) * 1000 // RATE
    transcript = [
        TranscriptSegment(Role.CUSTOMER, 200, 2200, "a" * 60),  # 1800 characters/min
        TranscriptSegment(Role.AGENT, 300, 900, "not on this call"),
        TranscriptSegment(Role.CUSTOMER, n_ms + 1200, n_ms + 3200, "b" * 10),
    ]
    warnings: list = []
    alerts, updates, summary = await run_session(audio.astype(np.int16), TRANSCRIPT_RULE, transcript=transcript,
                                                 warnings=warnings)
    before = [u for u in updates if u.window_end_ms < 2200]
    after = [u for u in updates if 2200 <= u.window_end_ms < 2200 + 15000 and u.window_end_ms < n_ms + 3200]
    assert before and all(u.speech_rate_cpm is None for u in before)
    assert after and all(u.speech_rate_cpm == 1800.0 for u in after)
    assert [a.rule_id for a in alerts] == ["fast-talker"]
    assert "1800 characters/min" in alerts[0].document["evidence"]["reason"]
    assert alerts[0].document["evidence"]["conditions"][0]["name"] == "speech_rate_cpm"
    late = [u for u in updates if u.window_end_ms >= n_ms + 3200]
    assert late and all(u.speech_rate_cpm == 70 * 60000 / 4000 for u in late)  # both segments within 15 s
    prosody = summary.document["speakers"][0]["prosody"]
    assert prosody["transcript_chars"] == 70 and prosody["transcript_segments"] == 2 and prosody["transcript_ms"] == 4000
    assert prosody["speech_rate_cpm"] == 1050.0
    assert [w.code for w in warnings] == ["TRANSCRIPT_REJECTED"]
    assert "agent has no audio channel" in warnings[0].message and "not on this call" not in warnings[0].message


async def test_without_a_transcript_there_is_no_character_rate():
    """A call without transcript segments reports no speech_rate_cpm anywhere and a speech_rate_cpm rule never fires."""
    speech = speech_8k()
    audio = _int16(np.concatenate([speech, np.zeros(RATE, np.float32)]))[:, None]
    alerts, updates, summary = await run_session(audio, TRANSCRIPT_RULE)
    assert updates and all(u.speech_rate_cpm is None for u in updates)
    assert alerts == []
    prosody = summary.document["speakers"][0]["prosody"]
    assert prosody["speech_rate_cpm"] is None and prosody["transcript_chars"] == 0
