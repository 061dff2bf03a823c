"""Bad input gets a precise gRPC status and message, and never affects a concurrent healthy call."""

import asyncio
import time
from dataclasses import replace

import grpc
from prometheus_client import REGISTRY

from agentassist.v1 import agent_assist_pb2 as pb
from clients.bridge import CallPlan, stream_call
from tests.conftest import CALL_WAV, run, service_config
from tests.grpc_helpers import END, audio_msg, config_msg, raw_call

INVALID = grpc.StatusCode.INVALID_ARGUMENT

BAD_CASES = [
    ("audio before config", [audio_msg(1)], INVALID, "first message must be a CallConfig, got audio"),
    ("no messages at all", [], INVALID, "ended before a CallConfig"),
    ("unspecified encoding", [config_msg(encoding=pb.AUDIO_ENCODING_UNSPECIFIED)], INVALID, "audio.encoding: unsupported encoding AUDIO_ENCODING_UNSPECIFIED"),
    ("unknown encoding", [config_msg(encoding=99)], INVALID, "audio.encoding: unsupported encoding 99"),
    ("unsupported rate", [config_msg(rate=44100)], INVALID, "audio.sample_rate_hz: 44100 Hz is not supported"),
    ("three channels", [config_msg(channels=3, roles=[])], INVALID, "audio.channels: 3 channels are not supported"),
    ("roles do not match channels", [config_msg(channels=2, roles=[pb.ROLE_CUSTOMER])], INVALID, "channel_roles: 1 roles given for 2 channel"),
    ("missing call id", [config_msg(call_id="")], INVALID, "call_id is required"),
    ("oversized chunk", [config_msg(), audio_msg(1, 70000)], INVALID, "seq=1 is 70000 bytes; the limit is 65536"),
    ("half a sample", [config_msg(), audio_msg(1, 321)], INVALID, "seq=1: audio chunk has 321 bytes, not a whole number of 2-byte sample frames"),
    ("seq far backwards", [config_msg(), *[audio_msg(i) for i in range(1, 61)], audio_msg(3)], INVALID, "seq=3 is far behind the stream (next expected seq=61)"),
    ("seq jumping ahead", [config_msg(), audio_msg(1), audio_msg(1000)], INVALID, "seq jumped from 1 to 1000: more than 250 chunks missing"),
    ("config twice", [config_msg(), audio_msg(1), config_msg()], INVALID, "CallConfig was sent twice"),
    ("audio after end", [config_msg(), audio_msg(1), END, audio_msg(2)], None, None),
]


def test_each_bad_input_gets_its_status_while_a_healthy_call_gets_its_alert(redis_server, test_models, start_server):
    """Every malformed call is refused precisely; the healthy call streaming at the same time still alerts."""
    server = start_server(service_config(redis_server.url, test_models["angry"]))
    healthy_plan = CallPlan("healthy-1", "agent-h", "team-h", roles=("customer", "agent"), speed=3.0)

    async def scenario():
        healthy = asyncio.create_task(stream_call(server.target, str(CALL_WAV), healthy_plan))
        await asyncio.sleep(0.5)
        outcomes = {}
        for i, (name, requests, _, _) in enumerate(BAD_CASES):
            requests = [replace_call_id(r, f"bad-{i}") for r in requests]
            outcomes[name] = await raw_call(server.target, requests, hold_open=1.0)
        duplicate = await raw_call(server.target, [config_msg(call_id="healthy-1")], hold_open=0.5)
        assert not healthy.done(), "the healthy call must still be streaming while the bad ones run"
        return await healthy, outcomes, duplicate

    healthy, outcomes, duplicate = run(scenario())
    for name, _, code, message in BAD_CASES:
        events, error = outcomes[name]
        if code is None:
            continue
        assert error is not None, name
        assert error[0] == code, (name, error)
        assert message in error[1], (name, error[1])
    assert duplicate[1][0] == grpc.StatusCode.ALREADY_EXISTS and "already streaming" in duplicate[1][1]
    assert healthy.error is None
    assert len(healthy.of("alert")) == 1
    assert server.call(lambda: server.app.calls.active) == 0


def replace_call_id(request, call_id):
    if request.WhichOneof("payload") == "config" and request.config.call_id == "bad":
        request = pb.CallRequest.FromString(request.SerializeToString())
        request.config.call_id = call_id
    return request


def test_audio_after_end_of_call_is_not_processed(redis_server, test_models, start_server):
    """Once EndOfCall is processed the summary is sent; audio sent after it changes nothing and is dropped, and the RPC
    ends with OK once the bridge half-closes (never INTERNAL from an RPC ended under the bridge's stream)."""
    server = start_server(service_config(redis_server.url, test_models["random"]))
    dropped = lambda: REGISTRY.get_sample_value("callpulse_chunks_dropped_total", {"reason": "after_end"}) or 0.0  # noqa: E731
    before = dropped()
    events, error = run(raw_call(server.target, [config_msg(call_id="ended"), audio_msg(1), END, audio_msg(2)], hold_open=0.5))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "summary"
    assert error is None and dropped() == before + 1
    assert server.call(lambda: server.app.calls.active) == 0


def test_full_server_refuses_with_resource_exhausted(redis_server, test_models, start_server):
    """Beyond max_calls a new call gets RESOURCE_EXHAUSTED; the admitted call is unaffected."""
    config = service_config(redis_server.url, test_models["random"])
    server = start_server(replace(config, server=replace(config.server, max_calls=1)))

    async def scenario():
        first = asyncio.create_task(raw_call(server.target, [config_msg(call_id="only"), audio_msg(1)], hold_open=1.5))
        await asyncio.sleep(0.5)
        second = await raw_call(server.target, [config_msg(call_id="one-too-many")], hold_open=0.2)
        return await first, second

    first, second = run(scenario())
    assert second[1][0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 1 concurrent calls" in second[1][1]
    assert first[0][0].WhichOneof("event") == "started"


def test_memory_bound_refuses_new_calls_only(redis_server, test_models, start_server):
    """Over the global memory bound a new call gets RESOURCE_EXHAUSTED naming the limit; under it, calls are admitted."""
    from service.calls import resident_mb

    config = service_config(redis_server.url, test_models["random"])
    low = max(1, int(resident_mb() / 2))  # the test process (which hosts the server) is already over this
    server = start_server(replace(config, server=replace(config.server, max_rss_mb=low)))

    refused = run(raw_call(server.target, [config_msg(call_id="mem-1")], hold_open=0.2))
    assert refused[1][0] == grpc.StatusCode.RESOURCE_EXHAUSTED and f"over its limit of {low} MB" in refused[1][1]
    roomy = start_server(replace(config, server=replace(config.server, max_rss_mb=10**6)))
    admitted = run(raw_call(roomy.target, [config_msg(call_id="mem-2"), audio_msg(1)], hold_open=0.2))
    assert admitted[0][0].WhichOneof("event") == "started"


def test_bridge_disconnect_frees_the_session(redis_server, test_models, start_server, subscribe):
    """A bridge that goes away mid-call frees its session and the calls channel is told once: the call id can be reused at once."""
    server = start_server(service_config(redis_server.url, test_models["angry"]))
    sub = subscribe([f"{server.prefix}:calls"])
    plan = CallPlan("drop-1", "agent-d", "team-d", roles=("customer", "agent"), speed=1.0)

    async def scenario():
        task = asyncio.create_task(stream_call(server.target, str(CALL_WAV), plan, hangup_after_s=2.0))
        await asyncio.sleep(1.0)
        assert server.call(lambda: server.app.calls.active) == 1
        return await task

    dropped = run(scenario())
    assert dropped.error["code"] == "CANCELLED" and dropped.of("summary") == []
    deadline = time.monotonic() + 5
    while server.call(lambda: server.app.calls.active) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.call(lambda: server.app.calls.active) == 0
    # gRPC may hand the server the cancellation as the end of the request stream before it cancels the
    # handler; the call then ends as at a half-close, with its summary, instead of as a disconnect.
    told = lambda m: m[1]["type"] in ("call_ended", "call_summary") and m[1]["call_id"] == "drop-1"
    assert sub.wait_for(told)
    time.sleep(0.3)
    ended = sub.wait_for(told)
    assert [m[1]["type"] for m in ended] in (["call_ended"], ["call_summary"])
    assert ended[0][1]["reason"] == ("disconnected" if ended[0][1]["type"] == "call_ended" else "stream_closed")
    again = run(stream_call(server.target, str(CALL_WAV), CallPlan("drop-1", "agent-d", "team-d", roles=("customer", "agent"), speed=0)))
    assert again.error is None and again.of("summary")


def test_grpc_idle_timeout_sends_the_summary_then_deadline_exceeded(redis_server, test_models, start_server):
    """A gRPC call that goes quiet gets its CallSummary (reason idle_timeout), then DEADLINE_EXCEEDED."""
    from service.config import IngestConfig

    server = start_server(service_config(redis_server.url, test_models["random"], ingest=IngestConfig(idle_timeout_s=1.0)))
    events, error = run(raw_call(server.target, [config_msg(call_id="quiet"), audio_msg(1)], hold_open=4.0))
    assert error[0] == grpc.StatusCode.DEADLINE_EXCEEDED and "idle timeout" in error[1]
    assert events[-1].WhichOneof("event") == "summary" and events[-1].summary.reason == "idle_timeout"
