"""Property-based fuzzing (hypothesis): decoders, every protocol parser and the rules parser either succeed or raise the
service's typed error, never anything else; random traffic against the real WebSocket server ends with a documented close
code and never an internal error. Bounded for CI (`make test`); `make fuzz` runs many more examples."""

import asyncio
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
from service.domain import AudioFormat, Encoding, Role
from service.errors import InvalidArgument
from service.rules import rule_errors
from service.transport.grpc_server import call_config_from_proto
from service.transport.json_events import start_from_json, transcript_from_json
from service.transport.ws_server import TwilioCall, _is_client_message, _select_media
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
    """Any JSON as Twilio's start message gives a call configuration or an InvalidArgument."""
    call = TwilioCall.__new__(TwilioCall)  # only the message parsing is under test here
    call.inbound_role = Role.CUSTOMER
    call.tracks = []
    for candidate in (doc, {"event": "start", "start": doc}):
        if not isinstance(candidate, dict):
            continue
        try:
            config = call._config(candidate)
        except InvalidArgument as exc:
            assert str(exc)
            continue
        assert config.audio.encoding is Encoding.MULAW


@UNIT
@given(json_values)
def test_audiohook_message_checks_never_raise(value):
    """The AudioHook message and media-offer checks answer yes/no for any JSON, never raise."""
    assert _is_client_message(value) in (True, False)
    media = _select_media(value)
    assert media is None or (media["format"] == "PCMU" and media["rate"] == 8000)


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

DOCUMENTED_CLOSE_CODES = {1000, 1003, 1008, 1009, 1013, 4408, 4409}
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


async def _send(url, messages):
    try:
        async with connect(url, open_timeout=10, close_timeout=2) as ws:
            for message in messages:
                await ws.send(message)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 2.0)
            except asyncio.TimeoutError:
                return None  # still open and waiting for more: acceptable
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.mark.parametrize("path", ["/", "/twilio", "/audiohook"])
def test_random_websocket_traffic_never_breaks_the_server(path, fuzz_server):
    """Random frame sequences on each endpoint close with a documented code (never 1011 internal error), and a healthy
    call afterwards still completes."""
    from clients.bridge import CallPlan, run_call
    from tests.conftest import CUSTOMER_WAV

    seen = []

    @settings(max_examples=SERVER_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(frames)
    def fuzz(messages):
        code = asyncio.run(_send(fuzz_server.ws_target + path, messages))
        seen.append(code)
        assert code is None or code in DOCUMENTED_CLOSE_CODES, (code, messages)

    fuzz()
    assert seen
    healthy = run_call(fuzz_server.ws_target, str(CUSTOMER_WAV), CallPlan(call_id=f"after{path}", agent_id="a", team="t",
                                                                           roles=("customer",), speed=0))
    assert healthy.error is None and healthy.of("summary")
