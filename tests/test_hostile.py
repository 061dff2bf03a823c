"""Hostile and faulty input beside a healthy call: messages that claim hours of audio, malformed JSON of every shape on
every WebSocket path, and connections that never start a call."""

import asyncio
import base64
import json
import threading
import time
import uuid
from dataclasses import replace

import grpc
import pytest
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentassist.v1 import agent_assist_pb2 as pb
from agentassist.v1 import agent_assist_pb2_grpc as pb_grpc
from clients.bridge import CallPlan, run_call
from service.calls import resident_mb
from service.config import IngestConfig, WindowConfig
from tests.conftest import CALL_WAV, service_config

MULAW_SILENCE = b"\xff"


def _sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


class LoopWatch:
    """Measures how long the server's event loop goes without running a 10 ms timer."""

    def __init__(self, loop):
        self.worst = 0.0
        self._stop = False
        self._future = asyncio.run_coroutine_threadsafe(self._watch(), loop)

    async def _watch(self):
        while not self._stop:
            began = time.monotonic()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.monotonic() - began - 0.01)

    def stop(self):
        self._stop = True
        self._future.result(5)
        return self.worst


async def _twilio(url, timestamps, call_id):
    """A Twilio stream whose media chunks carry the given timestamps (ms), then stop; returns (close code, reason)."""
    custom = {"agent_id": "hostile", "team": "t", "call_id": call_id}
    start = {"accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound", "outbound"], "customParameters": custom,
             "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
    payload = base64.b64encode(MULAW_SILENCE * 160).decode()
    try:
        async with connect(url + "/twilio") as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(json.dumps({"event": "start", "start": start}))
            for chunk, timestamp in enumerate(timestamps, start=1):
                for track in ("inbound", "outbound"):
                    await ws.send(json.dumps({"event": "media", "media": {"track": track, "chunk": str(chunk), "timestamp": str(timestamp),
                                                                         "payload": payload}}))
            await ws.send(json.dumps({"event": "stop", "stop": {}}))
            await asyncio.wait_for(ws.recv(), 20)
    except ConnectionClosed as exc:
        return exc.rcvd.code, exc.rcvd.reason


def _audiohook_headers(key="k"):
    return {"Audiohook-Organization-Id": "org", "Audiohook-Session-Id": str(uuid.uuid4()),
            "Audiohook-Correlation-Id": str(uuid.uuid4()), "X-API-KEY": key}


def _ah(headers, kind, seq, parameters, serverseq=0):
    return json.dumps({"version": "2", "id": headers["Audiohook-Session-Id"], "type": kind, "seq": seq, "serverseq": serverseq,
                       "position": "PT0S", "parameters": parameters})


async def _audiohook_discard(url, discarded, conversation):
    """An AudioHook session: open, 1 s of audio, resumed with `discarded`, 1 s more, close; returns (server messages, close code)."""
    headers = _audiohook_headers()
    received = []
    opening = {"organizationId": "org", "conversationId": conversation, "customConfig": {"agent_id": "hostile", "team": "t"},
               "media": [{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}]}
    try:
        async with connect(url + "/audiohook", additional_headers=headers) as ws:
            await ws.send(_ah(headers, "open", 1, opening))
            received.append(json.loads(await ws.recv()))
            await ws.send(MULAW_SILENCE * 8000)
            await ws.send(_ah(headers, "paused", 2, {}, 1))
            await ws.send(_ah(headers, "resumed", 3, {"start": "PT1S", "discarded": discarded}, 1))
            await ws.send(MULAW_SILENCE * 8000)
            await ws.send(_ah(headers, "close", 4, {"reason": "end"}, 1))
            while True:
                doc = json.loads(await asyncio.wait_for(ws.recv(), 20))
                received.append(doc)
                if doc["type"] == "disconnect":
                    await ws.send(_ah(headers, "close", 5, {"reason": "disconnect"}, doc["seq"]))
    except ConnectionClosed as exc:
        return received, exc.rcvd.code if exc.rcvd else None


def _grpc_seq_jump(target, call_id):
    """Maximal mu-law chunks (64 KiB, 8 s each) with a seq jump of 250 between them, then EndOfCall; returns the summary."""
    def requests():
        yield pb.CallRequest(config=pb.CallConfig(call_id=call_id, agent_id="hostile", team="t", realtime=False,
                                                  audio=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_MULAW, sample_rate_hz=8000, channels=1)))
        for seq in (1, 2, 252, 253):
            yield pb.CallRequest(audio=pb.AudioChunk(seq=seq, data=MULAW_SILENCE * 65536))
        yield pb.CallRequest(end=pb.EndOfCall(reason="end_of_call"))

    with grpc.insecure_channel(target) as channel:
        events = list(pb_grpc.AgentAssistStub(channel).StreamCall(requests()))
    return [e.summary for e in events if e.WhichOneof("event") == "summary"][0]


def test_messages_claiming_hours_of_audio_do_not_hurt_a_healthy_call(redis_server, test_models, start_server, subscribe):
    """Beside a healthy live call: a Twilio timestamp 30 min ahead and an AudioHook discard of 30 min are stepped over
    (the call clock advances, `stop` and `close` are acted on, summaries published), a gRPC seq jump of 250 maximal
    chunks (2048 s) too; a timestamp 3 h 50 min ahead and a discard of 100 h are refused as beyond max_gap_s. The
    server's loop never stalls for a second, the healthy call's updates stay under 1 s and its alert arrives, and
    memory does not grow by the hours claimed."""
    server = start_server(service_config(redis_server.url, test_models["angry"], windows=WindowConfig(max_pending_windows=64)))
    calls = subscribe([f"{server.prefix}:calls"])
    healthy = {}
    beside = threading.Thread(target=lambda: healthy.update(r=run_call(
        server.target, str(CALL_WAV), CallPlan(call_id="healthy", agent_id="a", team="t", roles=("customer", "agent"), speed=1))))
    rss_before = resident_mb()
    beside.start()
    time.sleep(6.0)  # the healthy customer is speaking
    watch = LoopWatch(server.loop)
    url = server.ws_target

    async def probes():
        return await asyncio.gather(
            _twilio(url, [0, 30 * 60_000, 30 * 60_000 + 20], "ahead-30min"),
            _twilio(url, [0, (3 * 60 + 50) * 60_000], "ahead-3h50"),
            _audiohook_discard(url, "PT1800S", "discard-30min"),
            _audiohook_discard(url, "PT360000S", "discard-100h"),
            asyncio.to_thread(_grpc_seq_jump, server.target.split("://")[1], "seq-jump"),
        )

    began = time.monotonic()
    twilio_ok, twilio_far, hook_ok, hook_far, jumped = asyncio.run(probes())
    probes_took = time.monotonic() - began
    worst_stall = watch.stop()
    beside.join(60)
    rss_after = resident_mb()

    assert twilio_ok[0] == 1000 and probes_took < 20
    assert twilio_far[0] == 1008 and "max_gap_s" in twilio_far[1]
    hook_messages, hook_code = hook_ok
    assert [m["type"] for m in hook_messages] == ["opened", "closed"] and hook_code == 1000
    far_messages, far_code = hook_far
    disconnect = [m for m in far_messages if m["type"] == "disconnect"]
    assert disconnect and disconnect[0]["parameters"]["reason"] == "error" and "max_gap_s" in disconnect[0]["parameters"]["info"]
    assert far_code == 1008
    assert jumped.duration_ms == (4 + 249) * 65536 * 1000 // 8000  # 249 missing chunks stepped over
    summaries = {m[1]["call_id"]: m[1] for m in calls.wait_for(lambda m: m[1].get("type") == "call_summary" and m[1]["call_id"] != "healthy")}
    deadline = time.monotonic() + 10
    while len(summaries) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
        summaries = {m[1]["call_id"]: m[1] for m in calls.messages if m[1].get("type") == "call_summary"}
    assert summaries["ahead-30min"]["duration_ms"] >= 30 * 60_000
    assert summaries["discard-30min"]["duration_ms"] >= 1800_000 + 2000

    result = healthy["r"]
    assert result.error is None and len(result.of("alert")) == 1
    latencies = [e["latency_ms"] for e in result.of("emotion")]
    assert latencies and max(latencies) < 1000, max(latencies)
    assert worst_stall < 1.0, worst_stall
    assert rss_after - rss_before < 300, (rss_before, rss_after)


def test_stop_is_acted_on_after_a_long_gap_in_a_live_call(redis_server, test_models, start_server):
    """A live Twilio call whose second chunk is 30 min ahead is not paced for the gap: its `stop` ends it at once with
    close 1000 (the gap is no audio that arrived, so no reason to wait)."""
    server = start_server(service_config(redis_server.url, test_models["neutral"]))
    began = time.monotonic()
    code, _ = asyncio.run(_twilio(server.ws_target, [0, 30 * 60_000] + [30 * 60_000 + 20 * i for i in range(1, 50)], "paced-gap"))
    assert code == 1000 and time.monotonic() - began < 10


def test_a_large_chunk_is_worked_through_a_slice_at_a_time(redis_server, test_models, start_server):
    """A replayed call of 64 KiB PCM16 chunks (4 s each at 8 kHz mono) gets the same windows as with 20 ms chunks: slicing
    the work changes nothing in the result."""
    server = start_server(service_config(redis_server.url, test_models["neutral"]))

    def summary(chunk_bytes):
        from clients.wavfile import read_wav

        samples = read_wav(str(CALL_WAV)).samples[:, 0].tobytes()

        def requests():
            yield pb.CallRequest(config=pb.CallConfig(call_id=f"slices-{chunk_bytes}", agent_id="a", team="t", realtime=False,
                                                      audio=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16LE, sample_rate_hz=8000, channels=1)))
            for seq, offset in enumerate(range(0, len(samples), chunk_bytes), start=1):
                yield pb.CallRequest(audio=pb.AudioChunk(seq=seq, data=samples[offset:offset + chunk_bytes]))
            yield pb.CallRequest(end=pb.EndOfCall())

        with grpc.insecure_channel(server.target.split("://")[1]) as channel:
            events = list(pb_grpc.AgentAssistStub(channel).StreamCall(requests()))
        return json.loads([e for e in events if e.WhichOneof("event") == "summary"][0].summary.document_json)

    small, large = summary(320), summary(65536)
    for a, b in zip(small["speakers"], large["speakers"]):
        assert (a["windows_scored"], a["segments"], a["speech_ms"]) == (b["windows_scored"], b["segments"], b["speech_ms"])
    assert small["duration_ms"] == large["duration_ms"]


# -- malformed JSON on every WebSocket path ------------------------------------------------------------------------------

DEEP = "[" * 200_000 + "]" * 200_000
NATIVE_START = {"type": "start", "call_id": "j", "agent_id": "a", "team": "t", "audio": {"encoding": "pcm16le", "sample_rate_hz": 8000}}
TWILIO_START = {"accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
                "customParameters": {"agent_id": "a", "team": "t"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
AH_OPEN = {"organizationId": "org", "conversationId": "c", "customConfig": {"agent_id": "a", "team": "t"},
           "media": [{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}]}


def _native(**audio):
    return json.dumps({**NATIVE_START, "audio": {**NATIVE_START["audio"], **audio}})


def _twilio_start(**start):
    return json.dumps({"event": "start", "start": {**TWILIO_START, **start}})


MALFORMED = [
    ("/", "deep", [DEEP], 1008),
    ("/", "deep object", ['{"a":' * 50_000 + "1" + "}" * 50_000], 1008),
    ("/", "5000-digit sample rate", ['{"type": "start", "audio": {"sample_rate_hz": ' + "9" * 5000 + "}}"], 1008),
    ("/", "channels 2.0", [_native(channels=2.0)], 1008),
    ("/", "channels true", [_native(channels=True)], 1008),
    ("/", "deep after start", [json.dumps(NATIVE_START), DEEP], 1008),
    ("/", "wrong-typed transcript", [json.dumps(NATIVE_START), json.dumps({"type": "transcript", "speaker": [], "start_ms": "0"})], None),
    ("/", "stop with an object reason", [json.dumps(NATIVE_START), json.dumps({"type": "stop", "reason": {"a": 1}})], 1008),
    ("/", "oversized", ["[" + "1," * 600_000 + "1]"], 1009),
    ("/twilio", "deep", [DEEP], 1008),
    ("/twilio", "mediaFormat a string", [_twilio_start(mediaFormat="audio/x-mulaw")], 1008),
    ("/twilio", "mediaFormat a list", [_twilio_start(mediaFormat=["audio/x-mulaw", 8000])], 1008),
    ("/twilio", "custom parameter a number", [_twilio_start(customParameters={"agent_id": 5, "team": "t"})], 1008),
    ("/twilio", "media chunk a float", [_twilio_start(), json.dumps({"event": "media", "media": {"chunk": 1.5, "timestamp": "0",
                                                                                                 "payload": ""}})], 1008),
    ("/twilio", "deep media", [_twilio_start(), '{"event": "media", "media": ' + "[" * 100_000 + "]" * 100_000 + "}"], 1008),
    ("/audiohook", "deep", ["[" * 30_000 + "]" * 30_000], "error"),
    ("/audiohook", "seq true", ["OPEN-SEQ-TRUE"], "error"),
    ("/audiohook", "customConfig a list", ["OPEN-CUSTOM-LIST"], "error"),
    ("/audiohook", "oversized", ["x" * 70_000], "error"),
]


async def _malformed(url, path, messages, patience=10.0):
    headers = _audiohook_headers() if path == "/audiohook" else None
    substitutes = {}
    if headers:
        ident = headers["Audiohook-Session-Id"]
        base = {"version": "2", "id": ident, "type": "open", "seq": 1, "serverseq": 0, "position": "PT0S", "parameters": AH_OPEN}
        substitutes = {"OPEN-SEQ-TRUE": json.dumps({**base, "seq": True}),
                       "OPEN-CUSTOM-LIST": json.dumps({**base, "parameters": {**AH_OPEN, "customConfig": ["a"]}})}
    received = []
    try:
        async with connect(url + path, additional_headers=headers, max_size=None) as ws:
            for message in messages:
                await ws.send(substitutes.get(message, message))
            while True:
                doc = json.loads(await asyncio.wait_for(ws.recv(), patience))
                received.append(doc)
                if doc.get("type") == "disconnect":
                    return received, "disconnect:" + doc["parameters"]["reason"]
    except ConnectionClosed as exc:
        return received, exc.rcvd.code if exc.rcvd else None
    except asyncio.TimeoutError:
        return received, None


@pytest.fixture(scope="module")
def shared_server(redis_server, test_models):
    from tests.conftest import ServerThread

    server = ServerThread(service_config(redis_server.url, test_models["neutral"])).start()
    yield server
    server.stop()


@pytest.mark.parametrize("path,name,messages,expected", MALFORMED, ids=[f"{p}:{n}" for p, n, _, _ in MALFORMED])
def test_malformed_json_gets_the_documented_answer(path, name, messages, expected, shared_server):
    """Deep, wrong-typed and oversized JSON gets the protocol's documented answer - native: an error event then 1008 (1009
    when over max_message_bytes), a bad transcript only a warning; Twilio: 1008; AudioHook: disconnect (reason error) -
    never 1011, and a call afterwards still works."""
    server = shared_server
    received, outcome = asyncio.run(_malformed(server.ws_target, path, messages, patience=10.0 if expected is not None else 2.0))
    if path == "/audiohook":
        assert outcome == "disconnect:" + expected, (outcome, received)
    elif expected is None:  # the call goes on: the bad segment was refused with a warning
        assert [d["code"] for d in received if d["type"] == "warning"] == ["TRANSCRIPT_REJECTED"], received
    else:
        assert outcome == expected, (outcome, received)
        if path == "/" and expected == 1008:
            assert received[-1]["type"] == "error" and received[-1]["code"] == "INVALID_ARGUMENT", received
    after = run_call(server.ws_target, str(CALL_WAV), CallPlan(call_id=f"after-{uuid.uuid4().hex[:6]}", agent_id="a", team="t",
                                                             roles=("customer", "agent"), speed=0))
    assert after.error is None and after.of("summary")


# -- connections that never start ------------------------------------------------------------------------------------------


def test_connections_that_never_start_a_call_are_closed_after_the_handshake_timeout(redis_server, test_models, start_server):
    """gRPC streams without a CallConfig get DEADLINE_EXCEEDED, a native connection without `start` and a Twilio one sending
    only `mark` close 4408, an AudioHook one sending only `ping` gets disconnect then 4408 - each after the handshake
    timeout, counted in callpulse_handshakes_total{outcome="timeout"}; none is left waiting."""
    config = service_config(redis_server.url, test_models["neutral"])
    server = start_server(replace(config, server=replace(config.server, handshake_timeout_s=0.5)))
    timeouts_before = _sample("callpulse_handshakes_total", outcome="timeout")

    def grpc_silent():
        def requests():
            time.sleep(5)  # the bridge says nothing
            yield from ()

        with grpc.insecure_channel(server.target.split("://")[1]) as channel:
            try:
                list(pb_grpc.AgentAssistStub(channel).StreamCall(requests(), timeout=10))
            except grpc.RpcError as exc:
                return exc.code()

    async def ws_silent(path, keepalive):
        headers = _audiohook_headers() if path == "/audiohook" else None
        seq = 0
        received = []
        try:
            async with connect(server.ws_target + path, additional_headers=headers) as ws:
                while True:
                    if keepalive == "mark":
                        await ws.send(json.dumps({"event": "mark", "mark": {"name": "m"}}))
                    elif keepalive == "ping":
                        seq += 1
                        await ws.send(_ah(headers, "ping", seq, {}))
                    try:
                        received.append(json.loads(await asyncio.wait_for(ws.recv(), 0.2)))
                    except asyncio.TimeoutError:
                        pass
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None, received

    async def all_ws():
        return await asyncio.gather(ws_silent("/", None), ws_silent("/twilio", "mark"), ws_silent("/audiohook", "ping"))

    began = time.monotonic()
    codes = [grpc_silent() for _ in range(2)]
    native, twilio, audiohook = asyncio.run(all_ws())
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
    assert native[0] == 4408 and twilio[0] == 4408 and audiohook[0] == 4408
    assert [m["type"] for m in audiohook[1]].count("disconnect") == 1 and "handshake timeout" in audiohook[1][-1]["parameters"]["info"]
    assert time.monotonic() - began < 15
    assert _sample("callpulse_handshakes_total", outcome="timeout") - timeouts_before == 5
    assert server.app.calls.handshakes == 0


def test_connections_waiting_to_start_are_bounded(redis_server, test_models, start_server):
    """With max_handshakes 2 and two connections waiting, a third WebSocket upgrade gets HTTP 503 and a gRPC call
    RESOURCE_EXHAUSTED naming the bound; once they start their calls, new connections are admitted."""
    config = service_config(redis_server.url, test_models["neutral"])
    server = start_server(replace(config, server=replace(config.server, max_handshakes=2, handshake_timeout_s=30)))

    async def scenario():
        waiting = [await connect(server.ws_target + "/") for _ in range(2)]
        while server.app.calls.handshakes < 2:
            await asyncio.sleep(0.01)
        try:
            async with connect(server.ws_target + "/"):
                third = 101
        except InvalidStatus as exc:
            third = exc.response.status_code
        grpc_code = await asyncio.to_thread(_grpc_config_only, server.target)
        for ws in waiting:
            await ws.send(json.dumps({**NATIVE_START, "call_id": f"w{id(ws)}"}))
            assert json.loads(await ws.recv())["type"] == "started"
        after = await asyncio.to_thread(_grpc_config_only, server.target)
        for ws in waiting:
            await ws.close()
        return third, grpc_code, after

    third, grpc_code, after = asyncio.run(scenario())
    assert third == 503
    assert grpc_code[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_handshakes" in grpc_code[1]
    assert after == "started"


def _grpc_config_only(target):
    def requests():
        yield pb.CallRequest(config=pb.CallConfig(call_id=f"g{uuid.uuid4().hex[:6]}", agent_id="a", team="t",
                                                  audio=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16LE, sample_rate_hz=8000, channels=1)))
        yield pb.CallRequest(end=pb.EndOfCall())

    with grpc.insecure_channel(target.split("://")[1]) as channel:
        try:
            events = list(pb_grpc.AgentAssistStub(channel).StreamCall(requests(), timeout=10))
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
    return "started" if events and events[0].WhichOneof("event") == "started" else events


def test_ingest_limits_are_configured_and_validated():
    """max_fill_ms and max_gap_s come with defaults, and out-of-range values are refused naming the field."""
    from service.errors import ConfigError

    assert IngestConfig().max_gap_s == 3600 and IngestConfig().max_fill_ms == 1000
    with pytest.raises(ConfigError, match="max_gap_s"):
        IngestConfig(max_gap_s=0)
    with pytest.raises(ConfigError, match="max_fill_ms"):
        IngestConfig(max_fill_ms=-1)
