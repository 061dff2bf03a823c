"""WebSocket ingest end to end: native protocol, Twilio Media Streams, Genesys AudioHook, health, limits."""

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clients.bridge import CallPlan, run_call
from clients.wavfile import read_wav, write_wav
from service.audio.codecs import encode
from service.config import IngestConfig, WindowConfig
from service.domain import Encoding
from tests.conftest import CALL_WAV, CUSTOMER_WAV, TIMINGS, run, service_config

ANY_SPEAKER_RULES = """
rules:
  - id: anyone-angry
    speaker: any
    all:
      - emotion: [angry]
        min: 0.6
        for: 2s
    severity: medium
    notify: [agent, supervisor]
    cooldown: 60s
    message: Someone sounds upset
"""


def plan(call_id, protocol="native", **kw):
    return CallPlan(call_id=call_id, agent_id=kw.pop("agent_id", "agent-ws"), team=kw.pop("team", "team-ws"),
                    roles=kw.pop("roles", ("customer", "agent")), speed=kw.pop("speed", 0), protocol=protocol, **kw)


@pytest.fixture
def angry_server(redis_server, test_models, start_server):
    return start_server(service_config(redis_server.url, test_models["angry"]))


@pytest.mark.parametrize("protocol", ["native", "twilio", "audiohook"])
def test_each_protocol_carries_a_call_to_an_alert_on_redis(protocol, angry_server, subscribe):
    """A WAV streamed over each WebSocket protocol ends in the sustained-anger alert on Redis."""
    p = angry_server.prefix
    sub = subscribe([f"{p}:agent:agent-ws", f"{p}:supervisor:team-ws", f"{p}:calls"])
    result = run_call(angry_server.ws_target, str(CALL_WAV), plan(f"{protocol}-1", protocol))
    assert result.error is None, result.error
    agent = sub.wait_for(lambda m: m[0].endswith(":agent:agent-ws"))
    supervisor = sub.wait_for(lambda m: m[0].endswith(":supervisor:team-ws"))
    assert len(agent) == 1 and agent[0][1]["rule_id"] == "customer-angry-sustained"
    assert agent[0][1]["speaker"] == "customer" and supervisor[0][1]["alert_id"] == agent[0][1]["alert_id"]
    customer_start = TIMINGS["call_stereo_8k.wav"]["customer_speech"][0][0] * 1000
    assert abs(agent[0][1]["start_ms"] - customer_start) < 300
    summary = sub.wait_for(lambda m: m[1].get("type") == "call_summary")[0][1]
    assert summary["reason"] in ("end_of_call", "close_end") and summary["duration_ms"] >= 20000
    if protocol == "native":
        kinds = [e["type"] for e in result.events]
        assert kinds[0] == "started" and kinds[-1] == "summary" and "alert" in kinds and "emotion" in kinds
        assert result.close_code == 1000
    if protocol == "audiohook":
        kinds = [e["type"] for e in result.events]
        assert kinds[0] == "opened" and kinds[-1] == "closed" and "pong" in kinds
        opened = result.events[0]
        assert opened["seq"] == 1 and opened["clientseq"] == 1 and opened["parameters"]["media"][0]["format"] == "PCMU"
        assert opened["parameters"]["media"][0]["channels"] == ["external", "internal"]


def _stereo_wav(tmp_path: Path, speech_on: int) -> str:
    """8 kHz stereo: the customer fixture's speech on channel `speech_on`, silence on the other."""
    speech = read_wav(str(CUSTOMER_WAV))
    from soxr import resample

    mono = np.clip(resample(speech.samples[:, 0].astype(np.float32), 16000, 8000), -32768, 32767).astype(np.int16)
    stereo = np.zeros((len(mono) + 4000, 2), np.int16)
    stereo[2000 : 2000 + len(mono), speech_on] = mono
    path = tmp_path / f"speech_on_{speech_on}.wav"
    write_wav(str(path), 8000, stereo)
    return str(path)


@pytest.mark.parametrize("protocol", ["native", "twilio", "audiohook"])
def test_stereo_role_mapping_follows_the_roles(protocol, redis_server, test_models, start_server, subscribe, tmp_path):
    """Speech only on the customer channel alerts for the customer, never the agent; swapping roles swaps the speaker."""
    rules = tmp_path / "any.yaml"
    rules.write_text(ANY_SPEAKER_RULES)
    server = start_server(service_config(redis_server.url, test_models["angry"], rules_path=str(rules)))
    p = server.prefix
    sub = subscribe([f"{p}:agent:role-agent"])
    wav = _stereo_wav(tmp_path, speech_on=0)
    for call_id, roles in (("roles-a", ("customer", "agent")), ("roles-b", ("agent", "customer"))):
        result = run_call(server.ws_target, wav, plan(f"{protocol}-{call_id}", protocol, roles=roles,
                                                       score_roles=("customer", "agent"), agent_id="role-agent"))
        assert result.error is None, result.error
    alerts = sub.wait_for(lambda m: len([x for x in sub.messages]) >= 2)
    by_call = {m[1]["call_id"]: m[1]["speaker"] for m in alerts}
    assert by_call == {f"{protocol}-roles-a": "customer", f"{protocol}-roles-b": "agent"}


# -- ordering: reordered, duplicated and missing chunks over the native protocol's seq64 framing ------------


async def _native_seq64(url, chunks_in_send_order, call_id, rate=8000, channels=2):
    start = {"type": "start", "call_id": call_id, "agent_id": "ord", "team": "ord", "framing": "seq64", "realtime": False,
             "audio": {"encoding": "pcm16le", "sample_rate_hz": rate, "channels": channels}}
    events = []
    async with connect(url) as ws:
        await ws.send(json.dumps(start))
        for seq, data in chunks_in_send_order:
            await ws.send(seq.to_bytes(8, "big") + data)
        await ws.send(json.dumps({"type": "stop"}))
        try:
            async for message in ws:
                events.append(json.loads(message))
        except ConnectionClosed:
            pass
    return events


def _call_chunks():
    samples = read_wav(str(CALL_WAV)).samples
    return [(i + 1, samples[j : j + 160].astype("<i2").tobytes()) for i, j in enumerate(range(0, len(samples), 160))]


def _updates(events):
    return [(e["window_start_ms"], e["window_end_ms"], tuple(round(s["score"], 4) for s in e["scores"]))
            for e in events if e["type"] == "emotion"]


def test_reordered_and_duplicated_chunks_give_the_same_result(redis_server, test_models, start_server):
    """Chunks swapped within the window and sent twice produce exactly the in-order call's updates."""
    server = start_server(service_config(redis_server.url, test_models["random"]))
    chunks = _call_chunks()
    baseline = run(_native_seq64(server.ws_target, chunks, "ord-base"))
    shuffled = list(chunks)
    for i in range(0, len(shuffled) - 3, 4):  # reverse every group of four
        shuffled[i : i + 4] = shuffled[i : i + 4][::-1]
    shuffled = [c for i, c in enumerate(shuffled) for _ in range(2 if i % 20 == 0 else 1)]  # immediate duplicates
    shuffled[600:600] = shuffled[590:595]  # and a few resent a little later
    result = run(_native_seq64(server.ws_target, shuffled, "ord-shuffled"))
    assert _updates(result) == _updates(baseline) and len(_updates(baseline)) > 10
    warnings = [e for e in result if e["type"] == "warning"]
    assert any(w["code"] == "CHUNK_DROPPED" and "duplicate" in w["message"] for w in warnings)
    assert not any(w["code"] == "AUDIO_GAP" for w in warnings)
    assert result[-1]["type"] == "summary" and result[-1]["duration_ms"] == baseline[-1]["duration_ms"]


def test_missing_chunks_are_filled_counted_and_reported(redis_server, test_models, start_server):
    """Lost chunks become silence of their length (the call keeps its duration), with a warning and a metric."""
    from service import metrics

    server = start_server(service_config(redis_server.url, test_models["random"]))
    chunks = _call_chunks()
    lost = set(range(300, 310)) | {500}
    before = metrics.AUDIO_GAPS._value.get()
    result = run(_native_seq64(server.ws_target, [c for c in chunks if c[0] not in lost], "gappy"))
    warnings = [e for e in result if e["type"] == "warning" and e["code"] == "AUDIO_GAP"]
    assert warnings and "10 chunk(s) (200 ms) missing before seq=310" in warnings[0]["message"]
    assert result[-1]["duration_ms"] == len(read_wav(str(CALL_WAV)).samples) * 1000 // 8000
    assert metrics.AUDIO_GAPS._value.get() - before == 2


# -- protocol violations get their documented error ---------------------------------------------------------


async def _exchange(url, messages, headers=None, linger=3.0):
    """Send messages, collect what comes back until the server closes; returns (texts, close code, reason)."""
    received = []
    try:
        async with connect(url, additional_headers=headers, max_size=None) as ws:
            for message in messages:
                await ws.send(message)
            deadline = time.monotonic() + linger
            while time.monotonic() < deadline:
                received.append(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
    except ConnectionClosed as exc:
        return received, exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else ""
    except asyncio.TimeoutError:
        return received, None, ""
    return received, None, ""


def _start(**overrides):
    doc = {"type": "start", "call_id": f"v-{uuid.uuid4().hex[:8]}", "agent_id": "a", "team": "t",
           "audio": {"encoding": "pcm16le", "sample_rate_hz": 8000, "channels": 1}}
    doc.update(overrides)
    return json.dumps(doc)


NATIVE_VIOLATIONS = [
    ("binary first", [b"\x00\x01"], 1008, "INVALID_ARGUMENT", "got a binary frame"),
    ("not json", ["{start"], 1008, "INVALID_ARGUMENT", "not valid JSON"),
    ("wrong first type", [json.dumps({"type": "stop"})], 1008, "INVALID_ARGUMENT", '"type": "start"'),
    ("missing call id", [_start(call_id="")], 1008, "INVALID_ARGUMENT", "call_id is required"),
    ("unknown encoding", [_start(audio={"encoding": "opus", "sample_rate_hz": 8000})], 1008, "INVALID_ARGUMENT", "audio.encoding"),
    ("unsupported rate", [_start(audio={"encoding": "mulaw", "sample_rate_hz": 44100})], 1008, "INVALID_ARGUMENT", "44100 Hz"),
    ("unknown field", [_start(colour="red")], 1008, "INVALID_ARGUMENT", "unknown field 'colour'"),
    ("start twice", [_start(), _start()], 1008, "INVALID_ARGUMENT", "start was sent twice"),
    ("unknown message", [_start(), json.dumps({"type": "pause"})], 1008, "INVALID_ARGUMENT", "unknown message type 'pause'"),
    ("half a sample", [_start(), b"\x00" * 321], 1008, "INVALID_ARGUMENT", "not a whole number"),
    ("short seq64 frame", [_start(framing="seq64"), b"\x00\x00"], 1008, "INVALID_ARGUMENT", "8-byte seq header"),
]


@pytest.mark.parametrize("name,messages,close,code,text", NATIVE_VIOLATIONS, ids=[c[0] for c in NATIVE_VIOLATIONS])
def test_native_protocol_violations(name, messages, close, code, text, angry_server):
    """Each native-protocol violation gets an error event naming the problem, then its close code."""
    received, close_code, _ = run(_exchange(angry_server.ws_target, messages))
    errors = [json.loads(m) for m in received if isinstance(m, str) and json.loads(m)["type"] == "error"]
    assert close_code == close
    assert errors and errors[-1]["code"] == code and text in errors[-1]["message"]


def test_oversized_message_is_refused(angry_server):
    """A frame over max_message_bytes closes the connection with 1009."""
    _, close_code, _ = run(_exchange(angry_server.ws_target, [_start(), b"\x00" * (2 * 1024 * 1024)]))
    assert close_code == 1009


def test_duplicate_call_id_and_full_server(redis_server, test_models, start_server):
    """A call_id already streaming closes with 4409; beyond max_calls new calls close with 1013."""
    config = service_config(redis_server.url, test_models["random"])
    server = start_server(replace(config, server=replace(config.server, max_calls=1)))

    async def scenario():
        async with connect(server.ws_target) as first:
            await first.send(_start(call_id="dup-1"))
            assert json.loads(await first.recv())["type"] == "started"
            duplicate = await _exchange(server.ws_target, [_start(call_id="dup-1")])
            other = await _exchange(server.ws_target, [_start(call_id="dup-2")])
            return duplicate, other

    duplicate, other = run(scenario())
    assert duplicate[1] == 4409 and "ALREADY_EXISTS" in duplicate[0][-1]
    assert other[1] == 1013 and "RESOURCE_EXHAUSTED" in other[0][-1]


def _twilio(event, seq, **body):
    return json.dumps({"event": event, "sequenceNumber": str(seq), **body, "streamSid": "MZ1"})


TWILIO_START = _twilio("start", 1, start={
    "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA-viol", "tracks": ["inbound", "outbound"],
    "customParameters": {"agent_id": "a", "team": "t"},
    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
})
TWILIO_MEDIA = _twilio("media", 2, media={"track": "inbound", "chunk": "1", "timestamp": "0", "payload": base64.b64encode(b"\xff" * 160).decode()})

TWILIO_VIOLATIONS = [
    ("media before start", [TWILIO_MEDIA], 1008, "media received before start"),
    ("binary frame", [TWILIO_START, b"\x00" * 160], 1003, "JSON text messages only"),
    ("bad base64", [TWILIO_START, _twilio("media", 2, media={"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "%%%"})], 1008, "base64 payload"),
    ("unknown track", [TWILIO_START, _twilio("media", 2, media={"track": "sideways", "chunk": "1", "timestamp": "0", "payload": ""})], 1008, "was not announced"),
    ("wrong media format", [TWILIO_START.replace("audio/x-mulaw", "audio/l16")], 1008, "mediaFormat"),
    ("missing agent", [TWILIO_START.replace('"agent_id": "a", ', "")], 1008, "customParameters.agent_id is required"),
]


@pytest.mark.parametrize("name,messages,close,text", TWILIO_VIOLATIONS, ids=[c[0] for c in TWILIO_VIOLATIONS])
def test_twilio_protocol_violations(name, messages, close, text, angry_server):
    """Each Twilio-stream violation closes the socket with its code and a reason naming the problem."""
    _, close_code, reason = run(_exchange(angry_server.ws_target + "/twilio", [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}), *messages]))
    assert close_code == close and text in reason


class AudioHookClient:
    """Builds AudioHook client messages for one session (tests only)."""

    def __init__(self, key="callpulse-dev-key", org=None):
        self.session_id = str(uuid.uuid4())
        self.org = org or str(uuid.uuid4())
        self.seq = 0
        self.headers = {"Audiohook-Organization-Id": self.org, "Audiohook-Session-Id": self.session_id,
                        "Audiohook-Correlation-Id": str(uuid.uuid4()), "X-API-KEY": key}

    def msg(self, kind, parameters=None, seq=None, session_id=None, serverseq=0):
        self.seq = self.seq + 1 if seq is None else seq
        return json.dumps({"version": "2", "id": session_id or self.session_id, "type": kind, "seq": self.seq,
                           "serverseq": serverseq, "position": "PT0S", "parameters": parameters or {}})

    def open(self, media=None, org=None, conversation=None):
        return self.msg("open", {
            "organizationId": org or self.org, "conversationId": conversation or str(uuid.uuid4()),
            "participant": {"id": str(uuid.uuid4()), "ani": "", "aniName": "", "dnis": ""},
            "media": media or [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}],
            "customConfig": {"agent_id": "ah-agent", "team": "ah-team"},
        })


def _audiohook_violations():
    c = AudioHookClient
    cases = []
    a = c(); cases.append(("bad seq", a, [a.open(), a.msg("ping", seq=5)], "error", "Invalid seq value"))
    a = c(); cases.append(("wrong id", a, [a.msg("open", session_id=str(uuid.uuid4()))], "error", "Session identifier mismatch"))
    a = c(); cases.append(("not json", a, ["{oops"], "error", "Text message not valid JSON"))
    a = c(); cases.append(("not a client message", a, [json.dumps({"type": "open"})], "error", "not a well-formed client message"))
    a = c(); cases.append(("audio before open", a, [b"\xff" * 320], "error", "Received audio in state PREPARING"))
    a = c(); cases.append(("unknown type", a, [a.msg("dance")], "error", "'dance' is not a supported client message"))
    a = c(); cases.append(("no supported media", a, [a.open(media=[{"type": "audio", "format": "L16", "channels": ["external"], "rate": 8000}])], "error", "No supported media"))
    a = c(); cases.append(("organization mismatch", a, [a.open(org=str(uuid.uuid4()))], "unauthorized", "organizationId"))
    a = c(); cases.append(("bad discarded duration", a, [a.open(), a.msg("discarded", {"start": "PT0S", "discarded": "3 seconds"})], "error", "ISO 8601 duration"))
    return cases


AUDIOHOOK_VIOLATIONS = _audiohook_violations()


@pytest.mark.parametrize("name,client,messages,reason,info", AUDIOHOOK_VIOLATIONS, ids=[c[0] for c in AUDIOHOOK_VIOLATIONS])
def test_audiohook_protocol_violations(name, client, messages, reason, info, angry_server):
    """Each AudioHook violation gets a disconnect message (reason, info); the close transaction then ends the socket."""
    async def scenario():
        received = []
        async with connect(angry_server.ws_target + "/audiohook", additional_headers=client.headers) as ws:
            for m in messages:
                await ws.send(m)
            try:
                while True:
                    doc = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    received.append(doc)
                    if doc["type"] == "disconnect":
                        await ws.send(client.msg("close", {"reason": "disconnect"}, serverseq=doc["seq"]))
            except ConnectionClosed as exc:
                return received, exc.rcvd.code if exc.rcvd else None

    received, code = run(scenario())
    disconnect = [d for d in received if d["type"] == "disconnect"]
    assert disconnect and disconnect[0]["parameters"]["reason"] == reason and info in disconnect[0]["parameters"]["info"]
    assert received[-1]["type"] == "closed" and code == 1008


def test_audiohook_missing_or_unknown_api_key_is_refused_at_the_upgrade(redis_server, test_models, start_server):
    """With API keys configured, a missing or unknown X-API-KEY is refused with HTTP 401 before the WebSocket opens;
    the right key gets `opened`."""
    config = service_config(redis_server.url, test_models["random"])
    server = start_server(replace(config, server=replace(config.server, audiohook_api_keys=("right-key",))))

    async def first_reply(client):
        try:
            async with connect(server.ws_target + "/audiohook", additional_headers=client.headers) as ws:
                await ws.send(client.open())
                return json.loads(await asyncio.wait_for(ws.recv(), 5))["type"]
        except InvalidStatus as exc:
            return exc.response.status_code

    assert run(first_reply(AudioHookClient(key="wrong-key"))) == 401
    assert run(first_reply(AudioHookClient(key=""))) == 401
    assert run(first_reply(AudioHookClient(key="right-key"))) == "opened"


def test_audiohook_ping_pause_and_discarded_audio(redis_server, test_models, start_server, subscribe):
    """ping gets pong (clientseq = the ping's seq); discarded audio during a pause still advances call time."""
    server = start_server(service_config(redis_server.url, test_models["random"]))
    sub = subscribe([f"{server.prefix}:calls"])
    client = AudioHookClient()
    second = encode(Encoding.MULAW, np.zeros(16000, np.int16))  # 1 s of stereo silence

    async def scenario():
        replies = []
        async with connect(server.ws_target + "/audiohook", additional_headers=client.headers) as ws:
            await ws.send(client.open(conversation="ah-pause"))
            replies.append(json.loads(await ws.recv()))
            await ws.send(second)
            await ws.send(client.msg("ping", serverseq=1))
            replies.append(json.loads(await ws.recv()))
            await ws.send(client.msg("paused", serverseq=2))
            await ws.send(client.msg("resumed", {"start": "PT1S", "discarded": "PT3.5S"}, serverseq=2))
            await ws.send(second)
            await ws.send(client.msg("close", {"reason": "end"}, serverseq=2))
            replies.append(json.loads(await ws.recv()))
        return replies

    opened, pong, closed = run(scenario())
    assert (opened["type"], opened["seq"]) == ("opened", 1)
    assert (pong["type"], pong["seq"], pong["clientseq"]) == ("pong", 2, 2)
    assert (closed["type"], closed["seq"], closed["clientseq"]) == ("closed", 3, 5)
    summary = sub.wait_for(lambda m: m[1]["type"] == "call_summary")[0][1]
    assert summary["call_id"] == "ah-pause" and summary["duration_ms"] == 5500


# -- health, readiness, limits, pacing -----------------------------------------------------------------


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_healthz_and_readyz_follow_the_model(redis_server):
    """/healthz answers at once; /readyz is 503 until the model is loaded and warm, then 200."""
    from tests.conftest import ServerThread
    from tests.fakes import FakeEmotionModel

    model = FakeEmotionModel()
    model.gate.clear()  # warm-up blocks until the gate opens
    server = ServerThread(service_config(redis_server.url, "unused"), model=model)
    server._thread.start()
    try:
        deadline = time.monotonic() + 30
        while server.app.ws_port <= 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        base = f"http://127.0.0.1:{server.app.ws_port}"
        assert _get(base + "/healthz") == 200
        assert _get(base + "/readyz") == 503
        assert _get(base + "/nowhere") == 404
        model.gate.set()
        assert server._ready.wait(30)
        assert _get(base + "/readyz") == 200
    finally:
        model.gate.set()
        server._ready.wait(30)
        server.stop()


def test_idle_timeout_ends_the_call_with_its_summary(redis_server, test_models, start_server):
    """A call that goes quiet gets its summary (reason idle_timeout), a DEADLINE_EXCEEDED error and close 4408."""
    server = start_server(service_config(redis_server.url, test_models["random"], ingest=IngestConfig(idle_timeout_s=1.0)))
    received, code, _ = run(_exchange(server.ws_target, [_start(call_id="idle-1"), b"\x00" * 320], linger=5))
    kinds = [json.loads(m)["type"] for m in received]
    assert kinds[-2:] == ["summary", "error"] and code == 4408
    assert json.loads(received[-2])["reason"] == "idle_timeout"
    assert json.loads(received[-1])["code"] == "DEADLINE_EXCEEDED"


@pytest.mark.parametrize("target", ["ws", "grpc"])
def test_max_call_duration_ends_the_call(target, redis_server, test_models, start_server):
    """Audio past max_call_duration ends the call: summary (reason max_duration), then DEADLINE_EXCEEDED."""
    server = start_server(service_config(redis_server.url, test_models["random"], ingest=IngestConfig(max_call_duration_s=3.0)))
    address = server.ws_target if target == "ws" else server.target
    result = run_call(address, str(CALL_WAV), plan(f"long-{target}"))
    assert result.error["code"] == "DEADLINE_EXCEEDED" and "maximum duration of 3 s" in result.error["message"]
    summary = result.of("summary")[0]
    assert summary["reason"] == "max_duration" and 3000 <= summary["duration_ms"] <= 3100


def test_a_live_call_sent_too_fast_is_warned_and_limited(redis_server, test_models, start_server):
    """A live call pushed at full speed gets TOO_FAST and is read no faster than the pacing factor allows."""
    ingest = IngestConfig(pacing_factor=2.0, pacing_burst_ms=500)
    server = start_server(service_config(redis_server.url, test_models["random"], ingest=ingest))
    started = time.monotonic()
    result = run_call(server.ws_target, str(CUSTOMER_WAV), plan("fast-live", roles=("customer",), realtime=True))
    elapsed = time.monotonic() - started
    audio_s = read_wav(str(CUSTOMER_WAV)).duration_s
    assert any(e["type"] == "warning" and e["code"] == "TOO_FAST" for e in result.events)
    assert elapsed >= (audio_s - 0.5) / 2.0 * 0.9


def test_replay_is_never_dropped_but_live_overload_is(redis_server, test_models, start_server):
    """With room for one window in flight, a replay waits for the model (nothing dropped) while a live call drops."""
    config = service_config(redis_server.url, test_models["random"], windows=WindowConfig(max_pending_windows=1),
                            ingest=IngestConfig(pacing_burst_ms=60000))
    server = start_server(config)
    replay = run_call(server.ws_target, str(CALL_WAV), plan("replay-1", realtime=False))
    live = run_call(server.ws_target, str(CALL_WAV), plan("live-1", realtime=True))
    replay_customer = replay.of("summary")[0]["speakers"][0]
    live_customer = live.of("summary")[0]["speakers"][0]
    assert replay_customer["windows_dropped"] == 0 and not any(e["type"] == "warning" for e in replay.events)
    assert live_customer["windows_dropped"] > 0
    assert any(e["type"] == "warning" and e["code"] == "WINDOWS_DROPPED" for e in live.events)
    assert replay_customer["windows_scored"] > live_customer["windows_scored"]


def test_twilio_track_mapping_is_configurable(redis_server, test_models, start_server, subscribe, tmp_path):
    """With twilio_inbound_role=agent, speech on Twilio's inbound track is attributed to the agent."""
    rules = tmp_path / "any.yaml"
    rules.write_text(ANY_SPEAKER_RULES)
    config = service_config(redis_server.url, test_models["angry"], rules_path=str(rules))
    server = start_server(replace(config, server=replace(config.server, twilio_inbound_role="agent")))
    sub = subscribe([f"{server.prefix}:agent:map-agent"])
    # the bridge sends the channel whose role it calls "customer" on the inbound track
    wav = _stereo_wav(tmp_path, speech_on=0)
    result = run_call(server.ws_target, wav, plan("twilio-map", "twilio", score_roles=("customer", "agent"), agent_id="map-agent"))
    assert result.error is None
    alerts = sub.wait_for(lambda m: True)
    assert [m[1]["speaker"] for m in alerts] == ["agent"]
