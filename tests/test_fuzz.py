"""Property-based fuzzing (hypothesis): decoders, every protocol parser and the rules parser either succeed or raise the
documented error (InvalidArgument; AudioHookProtocolError for AudioHook), never anything else, also for wrong-typed,
100,000-deep and huge-number JSON in any field of any message; random traffic against the real WebSocket server ends with
a documented close code and never an internal error. Bounded for CI (`make test`); `make fuzz` runs many more examples."""

import asyncio
import copy
import json
import os

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentassist.v1 import agent_assist_pb2 as pb
from service.audio.codecs import decode, encode
from service.domain import AudioFormat, Encoding, Role, TranscriptSegment
from service.errors import InvalidArgument
from service.rules import rule_errors
from service.transport import json_events, twilio_wire
from service.transport.audiohook_wire import (
    AudioHookProtocolError,
    ClientMessage,
    OpenParameters,
    close_reason,
    discarded_ms,
    error_code,
    open_parameters,
    parse_client_message,
    select_media,
)
from service.transport.grpc_server import call_config_from_proto
from service.transport.json_events import native_message, start_from_json, stop_from_json, transcript_from_json
from service.transport.twilio_wire import TwilioMedia, TwilioOther, TwilioStart, TwilioStop, parse_twilio
from tests.conftest import service_config

EXAMPLES = int(os.environ.get("CALLPULSE_FUZZ_EXAMPLES", "150"))
SERVER_EXAMPLES = max(10, EXAMPLES // 6)
UNIT = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=25,
)
formats = st.builds(
    AudioFormat,
    encoding=st.sampled_from(list(Encoding)),
    sample_rate=st.sampled_from([8000, 16000]),
    channel_roles=st.sampled_from([(Role.CUSTOMER,), (Role.CUSTOMER, Role.AGENT), (Role.AGENT, Role.CUSTOMER)]),
)


@UNIT
@given(formats, st.binary(max_size=4000))
def test_decoder_returns_whole_frames_or_a_clear_error(audio_format, data):
    """Any bytes decode to int16 frames of the declared channels, or are refused as InvalidArgument (partial frames)."""
    try:
        frames = decode(audio_format, data)
    except InvalidArgument as exc:
        assert len(data) % audio_format.frame_bytes != 0 and "frame" in str(exc)
        return
    assert frames.dtype == np.int16 and frames.shape == (len(data) // audio_format.frame_bytes, audio_format.channels)


@UNIT
@given(st.sampled_from([Encoding.MULAW, Encoding.ALAW]), st.binary(min_size=1, max_size=2000))
def test_g711_decode_then_encode_is_the_identity(encoding, data):
    """Every G.711 code decodes to a level that encodes back to the same code (mu-law's two zeros aside)."""
    samples = decode(AudioFormat(encoding, 8000, (Role.CUSTOMER,)), data)[:, 0]
    again = encode(encoding, samples)
    if encoding is Encoding.MULAW:
        canonical = bytes(0xFF if b == 0x7F else b for b in data)  # +0 and -0 are one level
        assert bytes(0xFF if b == 0x7F else b for b in again) == canonical
    else:
        assert again == data


@UNIT
@given(json_values)
def test_native_start_parser_accepts_or_names_the_problem(doc):
    """Any JSON as a native `start` gives a call configuration or an InvalidArgument, nothing else."""
    try:
        config, framing = start_from_json(doc)
    except InvalidArgument as exc:
        assert str(exc)
        return
    assert framing in ("raw", "seq64") and config.call_id


transcript_docs = st.fixed_dictionaries(
    {"type": st.just("transcript")},
    optional={"speaker": json_values | st.sampled_from(["customer", "agent"]), "start_ms": json_values | st.integers(-5, 10**6),
              "end_ms": json_values | st.integers(-5, 10**6), "text": json_values, "extra": json_values},
)


@UNIT
@given(transcript_docs)
def test_native_transcript_parser_accepts_or_names_the_problem(doc):
    """Any `transcript` message gives a valid segment or an InvalidArgument naming a transcript field, nothing else."""
    try:
        segment = transcript_from_json(doc)
    except InvalidArgument as exc:
        assert str(exc).startswith("transcript")
        return
    assert 0 <= segment.start_ms < segment.end_ms and isinstance(segment.text, str)


@UNIT
@given(
    call_id=st.text(max_size=140), agent_id=st.text(max_size=10), team=st.text(max_size=10), tenant=st.text(max_size=10),
    encoding=st.integers(-1, 5), rate=st.integers(0, 50000), channels=st.integers(0, 4),
    roles=st.lists(st.integers(-1, 4), max_size=4), score=st.lists(st.integers(-1, 4), max_size=3),
)
def test_grpc_call_config_parser_accepts_or_names_the_problem(call_id, agent_id, team, tenant, encoding, rate, channels, roles, score):
    """Any CallConfig message gives a call configuration or an InvalidArgument, nothing else."""
    msg = pb.CallConfig(call_id=call_id, agent_id=agent_id, team=team, tenant=tenant,
                        audio=pb.AudioFormat(encoding=encoding, sample_rate_hz=rate, channels=channels, channel_roles=roles),
                        score_roles=score)
    try:
        config = call_config_from_proto(msg)
    except InvalidArgument as exc:
        assert str(exc)
        return
    assert config.audio.sample_rate in (8000, 16000) and config.call_id == call_id


@UNIT
@given(json_values)
def test_twilio_start_parser_accepts_or_names_the_problem(doc):
    """Any JSON as Twilio's start message (or as its `start` object) gives a typed TwilioStart or an InvalidArgument."""
    for candidate in (doc, {"event": "start", "start": doc}):
        try:
            message = parse_twilio(json.dumps(candidate), max_chars=twilio_wire.MAX_MESSAGE_CHARS, max_payload_bytes=1024)
        except InvalidArgument as exc:
            assert str(exc)
            continue
        assert isinstance(message, (TwilioStart, TwilioMedia, TwilioStop, TwilioOther))
        if isinstance(message, TwilioStart):
            assert set(message.tracks) <= {"inbound", "outbound"} and all(isinstance(v, str) for v in message.custom.values())


@UNIT
@given(json_values)
def test_audiohook_message_checks_accept_or_refuse_in_protocol(value):
    """Any JSON as an AudioHook client message is a ClientMessage or an AudioHookProtocolError; media selection never raises."""
    try:
        message = parse_client_message(json.dumps(value))
    except AudioHookProtocolError as exc:
        assert exc.info
    else:
        assert isinstance(message, ClientMessage) and isinstance(message.seq, int) and not isinstance(message.seq, bool)
    media = select_media(value)
    assert media is None or (media["format"] == "PCMU" and media["rate"] == 8000)


# -- recursive and wrong-typed JSON for every message type of every protocol ------------------------------------------


class Raw:
    """JSON text spliced in verbatim where json.dumps cannot produce it (200,000-deep nesting, 5000-digit numbers)."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return f"Raw({self.text[:30]!r}... {len(self.text)} chars)"


DELETE = object()


def serialise(doc):
    raws = []

    def splice(value):
        raws.append(value.text)
        return f"@raw{len(raws) - 1}@"

    text = json.dumps(doc, default=splice)
    for i, raw in enumerate(raws):
        text = text.replace(f'"@raw{i}@"', raw, 1)
    return text


depths = st.integers(1, 100_000) | st.sampled_from([31, 32, 33, 34, 1000])
raw_texts = st.one_of(
    depths.map(lambda n: "[" * n + "]" * n),
    depths.map(lambda n: '{"a":' * n + "0" + "}" * n),
    depths.map(lambda n: "[" * n),
    depths.map(lambda n: ('[{"k":' * n)[: 2 * n] + "1" + "]}" * n),
    st.integers(4301, 20_000).map(lambda n: "9" * n),
    st.sampled_from(["-" + "1" * 5000, "1e999", "-1e999", "1" + "0" * 400 + ".5", "NaN", "Infinity", "-Infinity", "1E400"]),
).map(Raw)
wrong_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2**64, 2**64), st.sampled_from([0, 1, -1, 2, 8000, 2**53, 10**30, 10**4000]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([2.0, 1.0, 1.5, 8000.0, 1e308]),
    st.text(max_size=20), st.sampled_from(["", " 7", "1.5", "-1", "true", "8000", "inbound", "customer", "PT1S", "\ud800", "\ud800x",
                                           "%%%", "x" * 5000]),
    st.lists(st.text(max_size=5), max_size=3), json_values, raw_texts,
    st.recursive(st.just([]), lambda children: st.lists(children, min_size=1, max_size=1) | st.dictionaries(st.just("k"), children, min_size=1),
                 max_leaves=60),
)


def paths(doc, prefix=()):
    """Every path into `doc`, the root included."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from paths(value, prefix + (index,))


def replaced(doc, path, value):
    if not path:
        return value if value is not DELETE else {}
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


def mutations(template):
    """A template message with one field (any path, or the whole message) replaced by a wrong-typed, deeply nested or
    huge value, or deleted."""
    every = list(paths(template))
    return st.builds(replaced, st.just(template), st.sampled_from(every), wrong_values | st.just(DELETE)).map(serialise)


AH_ID = "e160e428-53e2-487c-977d-96989bf5c99d"


def audiohook_template(kind, parameters):
    return {"version": "2", "id": AH_ID, "type": kind, "seq": 2, "serverseq": 1, "position": "PT1.5S", "parameters": parameters}


TEMPLATES = {
    "native": [
        {"type": "start", "call_id": "c", "agent_id": "a", "team": "t", "tenant": "x", "score_roles": ["customer"], "realtime": True,
         "framing": "raw", "audio": {"encoding": "mulaw", "sample_rate_hz": 8000, "channels": 2, "channel_roles": ["customer", "agent"]}},
        {"type": "transcript", "speaker": "customer", "start_ms": 0, "end_ms": 1500, "text": "hello"},
        {"type": "stop", "reason": "end_of_call"},
    ],
    "twilio": [
        {"event": "connected", "protocol": "Call", "version": "1.0.0"},
        {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
            "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound", "outbound"],
            "customParameters": {"agent_id": "a", "team": "t", "score_roles": "customer,agent"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}},
        {"event": "media", "sequenceNumber": "2", "streamSid": "MZ1",
         "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": "////"}},
        {"event": "mark", "sequenceNumber": "3", "streamSid": "MZ1", "mark": {"name": "m1"}},
        {"event": "dtmf", "sequenceNumber": "4", "streamSid": "MZ1", "dtmf": {"track": "inbound_track", "digit": "1"}},
        {"event": "stop", "sequenceNumber": "5", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"}},
    ],
    "audiohook": [
        audiohook_template("open", {
            "organizationId": "o", "conversationId": "c", "participant": {"id": "p", "ani": "", "aniName": "", "dnis": ""},
            "media": [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}],
            "customConfig": {"agent_id": "a", "team": "t", "score_roles": ["customer"], "realtime": True}}),
        audiohook_template("ping", {"rtt": "PT0.05S"}),
        audiohook_template("paused", {}),
        audiohook_template("resumed", {"start": "PT1S", "discarded": "PT0.5S"}),
        audiohook_template("discarded", {"start": "PT1S", "discarded": "PT2S"}),
        audiohook_template("update", {"language": "en-US"}),
        audiohook_template("error", {"code": 500, "message": "internal"}),
        audiohook_template("close", {"reason": "end"}),
    ],
}


def parse_native(text):
    kind, doc = native_message(text, max_chars=json_events.MAX_MESSAGE_CHARS)
    if kind == "start":
        return start_from_json(doc)
    if kind == "transcript":
        return transcript_from_json(doc)
    if kind == "stop":
        return stop_from_json(doc)
    return kind


def parse_twilio_message(text):
    return parse_twilio(text, max_chars=twilio_wire.MAX_MESSAGE_CHARS, max_payload_bytes=1024)


def parse_audiohook(text):
    message = parse_client_message(text)
    if message.type == "open":
        return open_parameters(message.parameters)
    if message.type in ("resumed", "discarded"):
        return discarded_ms(message.parameters, message.type)
    if message.type == "close":
        return close_reason(message.parameters)
    if message.type == "error":
        return error_code(message.parameters)
    return message


# protocol: (parser, its documented error, what it returns)
PROTOCOLS = {
    "native": (parse_native, InvalidArgument, (tuple, TranscriptSegment, str)),
    "twilio": (parse_twilio_message, InvalidArgument, (TwilioStart, TwilioMedia, TwilioStop, TwilioOther)),
    "audiohook": (parse_audiohook, AudioHookProtocolError, (ClientMessage, OpenParameters, int, str, type(None))),
}
MESSAGES = [(protocol, template) for protocol, templates in TEMPLATES.items() for template in templates]


@pytest.mark.parametrize("protocol, template", MESSAGES, ids=[f"{p}-{t.get('type') or t.get('event')}" for p, t in MESSAGES])
def test_recursive_and_wrong_typed_json_for_every_message_type_of_every_protocol(protocol, template):
    """A valid message of each type with one field replaced by wrong-typed, deeply nested (up to 100,000 levels) or huge
    JSON parses to a typed message or raises exactly the protocol's documented error, with a short text."""
    parser, documented, typed = PROTOCOLS[protocol]
    assert isinstance(parser(serialise(template)), typed)  # the template itself is valid

    @UNIT
    @given(mutations(template))
    def check(text):
        try:
            result = parser(text)
        except Exception as exc:  # noqa: BLE001 - the property is about which type escapes
            assert isinstance(exc, documented), f"{type(exc).__name__}: {exc}"
            assert 0 < len(str(exc)) < 300
            return
        assert isinstance(result, typed) and not isinstance(result, bool)

    check()


rule_keys = st.sampled_from(["id", "speaker", "all", "any", "not", "emotion", "min", "for", "clear", "silence", "overtalk",
                             "interruptions", "speech_rate_spm", "loudness_over_baseline_db", "ge", "gt", "by", "within",
                             "severity", "notify", "cooldown", "escalate", "after", "message", "max_pause", "warmup"])
rule_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 500) | st.floats(-2, 2, allow_nan=False) | st.sampled_from(
        ["5s", "200ms", "2m", "soon", "customer", "agent", "any", "angry", "high", "supervisor", "x"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(rule_keys, children, max_size=5),
    max_leaves=20,
)


@UNIT
@given(st.lists(rule_values, max_size=4))
def test_rules_parser_returns_rules_or_line_precise_errors(rules):
    """Any rules document parses to rules or to errors that each start with FILE:LINE:COLUMN."""
    text = yaml.safe_dump({"rules": rules})
    parsed, errors = rule_errors(text, "r.yaml")
    assert (parsed is None) == bool(errors)
    for error in errors:
        location = error.split(": ", 1)[0].split(":")
        assert location[0] == "r.yaml" and len(location) in (1, 3), error


@UNIT
@given(st.text(max_size=300))
def test_rules_parser_survives_arbitrary_text(text):
    """Arbitrary text as a rules file gives rules or errors, never an exception."""
    parsed, errors = rule_errors(text, "r.yaml")
    assert (parsed is None) == bool(errors)


# -- random traffic against the real WebSocket server ---------------------------------------------

DOCUMENTED_CLOSE_CODES = {1000, 1003, 1007, 1008, 1009, 1013, 4408, 4409}
frames = st.lists(
    st.one_of(
        st.binary(max_size=700),
        json_values.map(json.dumps),
        st.sampled_from([
            json.dumps({"type": "start", "call_id": "fz", "agent_id": "a", "team": "t", "framing": "seq64",
                        "audio": {"encoding": "pcm16le", "sample_rate_hz": 8000, "channels": 1}}),
            json.dumps({"type": "stop"}),
            json.dumps({"type": "transcript", "speaker": "customer", "start_ms": 0, "end_ms": 1500, "text": "fuzz"}),
            json.dumps({"event": "start", "start": {"customParameters": {"agent_id": "a", "team": "t"}, "tracks": ["inbound"],
                                                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}),
            json.dumps({"event": "media", "media": {"track": "inbound", "chunk": "1", "payload": "////"}}),
        ]),
    ),
    max_size=8,
)


@pytest.fixture(scope="module")
def fuzz_server(redis_server, test_models):
    from tests.conftest import ServerThread

    server = ServerThread(service_config(redis_server.url, test_models["neutral"])).start()
    yield server
    server.stop()


AUDIOHOOK_HEADERS = {"Audiohook-Organization-Id": "o", "Audiohook-Session-Id": AH_ID,
                     "Audiohook-Correlation-Id": "c0ffee00-0000-4000-8000-000000000000", "X-API-KEY": "fuzz-key"}


def _first(template, **fields):
    return {**template, **fields}


def hostile_sequences(path):
    """A protocol's valid opening, then one of its messages with a field replaced by wrong-typed, deeply nested or
    huge JSON (or the opening message itself so mutated)."""
    if path == "/":
        start, *rest = TEMPLATES["native"]
        return st.one_of(mutations(start).map(lambda m: [m]),
                         st.sampled_from(rest).flatmap(mutations).map(lambda m: [json.dumps(start), m]))
    if path == "/twilio":
        connected, start, *rest = TEMPLATES["twilio"]
        return st.one_of(mutations(start).map(lambda m: [json.dumps(connected), m]),
                         st.sampled_from(rest).flatmap(mutations).map(lambda m: [json.dumps(connected), json.dumps(start), m]))
    opening, *rest = TEMPLATES["audiohook"]
    opening = _first(opening, seq=1, serverseq=0)
    return st.one_of(mutations(opening).map(lambda m: [m]),
                     st.sampled_from(rest).flatmap(mutations).map(lambda m: [json.dumps(opening), m]))


async def _send(url, messages, headers=None):
    try:
        async with connect(url, open_timeout=10, close_timeout=2, additional_headers=headers, max_size=None) as ws:
            for message in messages:
                await ws.send(message)
            try:
                while True:
                    reply = await asyncio.wait_for(ws.recv(), 2.0)
                    if headers and isinstance(reply, str) and '"disconnect"' in reply:  # AudioHook: close as Genesys does
                        doc = json.loads(reply)
                        await ws.send(json.dumps({"version": "2", "id": AH_ID, "type": "close", "seq": 99, "serverseq": doc["seq"],
                                                  "position": "PT0S", "parameters": {"reason": "disconnect"}}))
            except asyncio.TimeoutError:
                return None  # still open and waiting for more: acceptable
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.mark.parametrize("path", ["/", "/twilio", "/audiohook"])
def test_random_websocket_traffic_never_breaks_the_server(path, fuzz_server):
    """Random frame sequences, and each protocol's messages made recursive, wrong-typed or huge after a valid opening,
    close with a documented code on each endpoint (never 1011 internal error), and a healthy call afterwards still
    completes."""
    from clients.bridge import CallPlan, run_call
    from tests.conftest import CUSTOMER_WAV

    seen = []
    headers = AUDIOHOOK_HEADERS if path == "/audiohook" else None

    @settings(max_examples=SERVER_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(frames | hostile_sequences(path))
    def fuzz(messages):
        code = asyncio.run(_send(fuzz_server.ws_target + path, messages, headers))
        seen.append(code)
        assert code is None or code in DOCUMENTED_CLOSE_CODES, (code, [m[:200] for m in messages])

    fuzz()
    assert seen
    healthy = run_call(fuzz_server.ws_target, str(CUSTOMER_WAV), CallPlan(call_id=f"after{path}", agent_id="a", team="t",
                                                                           roles=("customer",), speed=0))
    assert healthy.error is None and healthy.of("summary")
