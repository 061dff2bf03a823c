"""End to end over gRPC: WAV -> bridge -> VAD -> emotion2vec (test model) -> rules -> Redis, and back."""

import asyncio
import json
import time
from dataclasses import replace

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.bridge import CallPlan, stream_call
from service.config import WindowConfig
from service.inference.speech import SpeechCheckedModel
from tests.conftest import CALL_WAV, CUSTOMER_WAV, TIMINGS, run, service_config

ALERT_FIELDS = {
    "schema_version", "type", "alert_id", "rule_id", "severity", "call_id", "agent_id", "team", "tenant", "speaker",
    "start_ms", "fired_ms", "wall_time", "evidence", "message", "notify", "model", "degraded", "latency_ms",
    "occurrence", "escalated",
}


def replay_config(redis_url, model):
    """Calls replayed faster than real time: allow enough windows in flight that none is dropped."""
    config = service_config(redis_url, model)
    return replace(config, windows=WindowConfig(max_pending_windows=512))


def plan(call_id, **kw):
    return CallPlan(call_id=call_id, agent_id=kw.pop("agent_id", "agent-7"), team=kw.pop("team", "billing"),
                    tenant="acme", roles=("customer", "agent"), speed=kw.pop("speed", 0), **kw)


def test_angry_call_alerts_agent_supervisor_stream_and_bridge(redis_server, test_models, start_server, subscribe):
    """With an always-angry test model the sustained-anger alert reaches every destination with every field."""
    server = start_server(replay_config(redis_server.url, test_models["angry"]))
    p = server.prefix
    sub = subscribe([f"{p}:agent:agent-7", f"{p}:supervisor:billing", f"{p}:calls"])
    result = run(stream_call(server.target, str(CALL_WAV), plan("call-angry")))
    assert result.error is None
    assert result.events[0]["type"] == "started" and result.events[-1]["type"] == "summary"

    stream_alerts = result.of("alert")
    assert len(stream_alerts) == 1
    doc = stream_alerts[0]["document"]
    assert ALERT_FIELDS <= set(doc)
    assert doc["schema_version"] == 2 and doc["type"] == "alert"
    assert (doc["rule_id"], doc["severity"], doc["speaker"]) == ("customer-angry-sustained", "high", "customer")
    assert (doc["call_id"], doc["agent_id"], doc["team"], doc["tenant"]) == ("call-angry", "agent-7", "billing", "acme")
    assert doc["model"].startswith("TEST MODEL") and doc["degraded"] is False
    customer_start = TIMINGS["call_stereo_8k.wav"]["customer_speech"][0][0] * 1000
    assert abs(doc["start_ms"] - customer_start) < 300
    assert doc["fired_ms"] - doc["start_ms"] >= 5000
    condition = doc["evidence"]["conditions"][0]
    assert (condition["kind"], condition["name"]) == ("emotion", "angry+fearful") and condition["value"] > 0.99
    assert condition["held_ms"] >= 5000 and len(condition["points"]) >= 10
    series = doc["evidence"]["series"]
    assert len(series) >= 10 and series[-1]["end_ms"] == doc["fired_ms"]
    assert {"scores", "loudness_dbfs", "pitch_hz", "speech_rate_spm"} <= set(series[-1])
    assert doc["evidence"]["reason"].startswith("angry+fearful 1.00 avg over ")
    assert doc["latency_ms"] > 0

    alert_id = doc["alert_id"]
    agent = sub.wait_for(lambda m: m[0].endswith(":agent:agent-7"))
    supervisor = sub.wait_for(lambda m: m[0].endswith(":supervisor:billing"))
    assert [m[1]["alert_id"] for m in agent] == [alert_id]
    assert [m[1]["alert_id"] for m in supervisor] == [alert_id]
    assert ALERT_FIELDS <= set(agent[0][1]) and isinstance(agent[0][1]["latency_ms"], float)

    entries = redis_server.client().xrange(f"{p}:alerts")
    assert [e[1]["alert_id"] for e in entries] == [alert_id]
    assert json.loads(entries[0][1]["document"])["rule_id"] == "customer-angry-sustained"

    summaries = sub.wait_for(lambda m: m[0].endswith(":calls") and m[1]["type"] == "call_summary")
    assert summaries and summaries[0][1]["alerts"][0]["alert_id"] == alert_id


def test_neutral_call_raises_no_alert(redis_server, test_models, start_server, subscribe):
    """With an always-neutral test model the same call produces updates but no alert anywhere."""
    server = start_server(replay_config(redis_server.url, test_models["neutral"]))
    p = server.prefix
    sub = subscribe([f"{p}:agent:agent-7", f"{p}:supervisor:billing", f"{p}:calls"])
    result = run(stream_call(server.target, str(CALL_WAV), plan("call-calm")))
    assert result.error is None
    updates = result.of("emotion")
    assert len(updates) >= 10 and all(u["top_label"] == "neutral" for u in updates)
    assert result.of("alert") == []
    assert sub.wait_for(lambda m: m[1].get("type") == "call_summary")  # everything published by now
    assert sub.wait_for(lambda m: m[1].get("type") == "alert", timeout=0.5) == []
    assert redis_server.client().xlen(f"{p}:alerts") == 0


def test_summary_and_qa_report_of_a_live_call(redis_server, test_models, start_server, subscribe, tmp_path):
    """The summary carries trajectory, peaks, prosody and the conversation; the service writes the QA report inside its
    reports directory even for a call id with path characters, and updates carry prosody over gRPC."""
    reports = tmp_path / "reports"
    config = replay_config(redis_server.url, test_models["angry"])
    server = start_server(replace(config, analytics=replace(config.analytics, reports_dir=str(reports))))
    sub = subscribe([f"{server.prefix}:calls"])
    result = run(stream_call(server.target, str(CALL_WAV), plan("../qa/report-1")))
    assert result.error is None
    updates = result.of("emotion")
    assert all(set(u) >= {"pitch_hz", "speech_rate_spm", "loudness_over_baseline_db", "pitch_range_st"} for u in updates)
    assert any(u["pitch_hz"] and 60 < u["pitch_hz"] < 400 for u in updates)
    summary = sub.wait_for(lambda m: m[1].get("type") == "call_summary")[0][1]
    customer = summary["speakers"][0]
    assert customer["speaker"] == "customer" and customer["trajectory"]["resolution_ms"] == 1000
    speech = TIMINGS["call_stereo_8k.wav"]["customer_speech"][0]
    seconds = [p["t_ms"] // 1000 for p in customer["trajectory"]["points"]]
    assert seconds == list(range(int(speech[0]), int(speech[1]) + 1))  # one point per second of speech, nothing else
    assert customer["peaks"][0]["label"] == "angry" and customer["prosody"]["pitch_hz"] > 60
    conversation = summary["conversation"]
    assert conversation["stereo"] is True and set(conversation["talk_ratio"]) == {"customer", "agent"}
    assert summary["alerts"][0]["reason"].startswith("angry+fearful")
    deadline = time.monotonic() + 10
    report = reports / "_qa_report-1.html"
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p.name for p in reports.iterdir()] == ["_qa_report-1.html"]
    html = report.read_text()
    assert "../qa/report-1" in html and "<svg" in html and "TEST MODEL" in html


def test_updates_arrive_at_least_every_second_while_the_customer_speaks(redis_server, test_models, start_server):
    """Every second of customer speech has an EmotionUpdate; the unscored agent gets none."""
    server = start_server(replay_config(redis_server.url, test_models["random"]))
    result = run(stream_call(server.target, str(CALL_WAV), plan("call-cadence")))
    updates = result.of("emotion")
    assert {u["speaker"] for u in updates} == {"customer"}
    ends = sorted(u["window_end_ms"] for u in updates)
    start, end = TIMINGS["call_stereo_8k.wav"]["customer_speech"][0]
    assert ends[0] - start * 1000 <= 1000
    assert all(b - a <= 1000 for a, b in zip(ends, ends[1:]))
    assert end * 1000 - ends[-1] <= 1000
    for u in updates:
        assert len(u["scores"]) == 9 and u["window_end_ms"] - u["window_start_ms"] <= 3000
        if u["segment_final"]:  # completed by the trailing silence that closed the segment
            assert u["completed_ms"] >= u["window_end_ms"] + 280
        else:
            assert u["completed_ms"] == u["window_end_ms"]
        assert abs(sum(s["score"] for s in u["scores"]) - 1) < 1e-3


def test_mono_16k_mulaw_and_alaw_calls_are_scored(redis_server, test_models, start_server):
    """A 16 kHz mono call and the stereo call sent as mu-law and A-law are all decoded and scored."""
    server = start_server(replay_config(redis_server.url, test_models["angry"]))
    mono = run(stream_call(server.target, str(CUSTOMER_WAV), replace(plan("mono16"), roles=("customer",))))
    assert mono.error is None and mono.of("emotion")
    for encoding in ("mulaw", "alaw"):
        result = run(stream_call(server.target, str(CALL_WAV), plan(f"g711-{encoding}", encoding=encoding)))
        assert result.error is None and len(result.of("alert")) == 1


def test_scoring_the_agent_too(redis_server, test_models, start_server):
    """score_roles=[customer, agent] scores both channels; the customer rule still fires only for the customer."""
    server = start_server(replay_config(redis_server.url, test_models["angry"]))
    result = run(stream_call(server.target, str(CALL_WAV), plan("both", score_roles=("customer", "agent"))))
    speakers = {u["speaker"] for u in result.of("emotion")}
    assert speakers == {"customer", "agent"}
    assert [a["speaker"] for a in result.of("alert")] == ["customer"]


def test_windows_of_concurrent_calls_share_forward_passes(redis_server, test_models, start_server):
    """Windows from different calls are scored together: one forward pass holds windows of several calls."""
    server = start_server(replay_config(redis_server.url, test_models["random"]))

    async def calls():
        return await asyncio.gather(*(stream_call(server.target, str(CALL_WAV), plan(f"batch-{i}")) for i in range(4)))

    results = run(calls())
    assert all(r.error is None and r.of("summary") for r in results)
    per_call = len(results[0].of("emotion"))
    checked = server.app.model
    assert isinstance(checked, SpeechCheckedModel)  # the default: silero-vad's check before the emotion model
    assert checked.model.largest_forward > 1
    assert server.app.batcher.largest_batch > 1
    assert all(len(r.of("emotion")) == per_call for r in results)  # every call got all of its updates


def test_health_service_reports_serving(redis_server, test_models, start_server):
    """The standard grpc.health.v1 service answers SERVING once the model is loaded."""
    server = start_server(service_config(redis_server.url, test_models["random"]))

    async def check():
        async with grpc.aio.insecure_channel(server.target.removeprefix("grpc://")) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            overall = await stub.Check(health_pb2.HealthCheckRequest(service=""))
            named = await stub.Check(health_pb2.HealthCheckRequest(service="agentassist.v1.AgentAssist"))
            return overall.status, named.status

    assert run(check()) == (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.SERVING)


def test_overloaded_model_sheds_windows_without_slowing_live_calls(redis_server, start_server):
    """With a model too slow for the load, live calls keep their pace: waiting windows are merged or dropped as stale,
    drops are counted and mark updates degraded, and every call still gets updates and its summary."""
    from service import metrics
    from tests.fakes import FakeEmotionModel

    model = FakeEmotionModel(per_audio_s=0.6)  # ~1.7 s of audio per second for 4 calls of continuous speech
    server = start_server(service_config(redis_server.url, "unused"), model=model)
    outcomes = ("merged", "dropped_superseded", "dropped_stale", "dropped_queue_full", "dropped_call_backlog")
    before = {o: metrics.WINDOWS.labels(o)._value.get() for o in outcomes}

    async def calls():
        plans = [CallPlan(f"overload-{i}", "agent-o", "team-o", roles=("customer",), speed=1.0) for i in range(4)]
        return await asyncio.gather(*(stream_call(server.target, str(CUSTOMER_WAV), p) for p in plans))

    results = run(calls())
    speakers = [r.of("summary")[0]["speakers"][0] for r in results]
    after = {o: metrics.WINDOWS.labels(o)._value.get() - before[o] for o in outcomes}
    assert all(r.error is None and r.of("emotion") for r in results)
    assert all(r.max_send_lag_s < 0.5 for r in results), [r.max_send_lag_s for r in results]
    assert sum(s["windows_merged"] for s in speakers) == after["merged"] > 0
    assert sum(s["windows_dropped"] for s in speakers) == sum(v for k, v in after.items() if k != "merged") > 0
    assert any(u["degraded"] for r in results for u in r.of("emotion"))
    assert any(w["code"] == "WINDOWS_DROPPED" for r in results for w in r.of("warning"))
