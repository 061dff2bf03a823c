"""Transcript segments over gRPC and the native WebSocket protocol, sent by the bridge beside the audio."""

import logging
from dataclasses import replace

import pytest

from clients.bridge import CallPlan, stream_call
from service.config import WindowConfig
from tests.conftest import CALL_WAV, run, service_config

# The sample call's customer speaks from 5.94 s to 14.78 s.
TRANSCRIPT = (
    {"speaker": "customer", "start_ms": 6_000, "end_ms": 9_000, "text": "x" * 45},   # 900 characters/min
    {"speaker": "customer", "start_ms": 9_500, "end_ms": 9_400, "text": "ends before it starts"},
    {"speaker": "caller", "start_ms": 10_000, "end_ms": 11_000, "text": "no such role"},
)


@pytest.mark.parametrize("transport", ["grpc", "native"])
def test_transcript_segments_give_a_character_rate_and_bad_ones_only_a_warning(transport, redis_server, test_models,
                                                                                start_server, caplog):
    """The customer's windows after a 3 s, 45-character segment report 900 characters/min and the summary counts
    it; the two bad segments get TRANSCRIPT_REJECTED warnings, the call still ends normally with its summary, and no
    transcript text reaches the log."""
    caplog.set_level(logging.DEBUG)
    config = replace(service_config(redis_server.url, test_models["neutral"]), windows=WindowConfig(max_pending_windows=512))
    server = start_server(config)
    target = server.target if transport == "grpc" else server.ws_target
    plan = CallPlan(call_id=f"transcript-{transport}", agent_id="agent-t", team="team-t", roles=("customer", "agent"),
                    speed=0, transcript=TRANSCRIPT)
    result = run(stream_call(target, str(CALL_WAV), plan))
    assert result.error is None and result.events[-1]["type"] == "summary"

    updates = result.of("emotion")
    before = [u for u in updates if u["window_end_ms"] < 9_000]
    after = [u for u in updates if u["window_end_ms"] >= 9_000]
    assert before and all(u.get("speech_rate_cpm") is None for u in before)
    assert after and all(u.get("speech_rate_cpm") == 900.0 for u in after)

    warnings = [w for w in result.of("warning") if w["code"] == "TRANSCRIPT_REJECTED"]
    assert warnings and "end_ms (9400) must be after start_ms (9500)" in warnings[0]["message"]
    assert not any("ends before it starts" in w["message"] or "no such role" in w["message"] for w in warnings)

    summary = result.events[-1]["document"]
    customer = next(s for s in summary["speakers"] if s["speaker"] == "customer")
    assert customer["prosody"]["transcript_chars"] == 45 and customer["prosody"]["speech_rate_cpm"] == 900.0
    # What the service logged (the bridge emulator's own websockets client traces frames, as a client may).
    service_records = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    assert service_records
    logged = "\n".join(record.getMessage() for record in service_records)
    assert "ends before it starts" not in logged and "no such role" not in logged and "x" * 45 not in logged
