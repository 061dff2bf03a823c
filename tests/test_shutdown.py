"""Graceful shutdown: SIGTERM during active calls ends them with their summaries, tells the bridges, and exits in time."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

from clients.bridge import CallPlan, run_call
from tests.conftest import CALL_WAV, PINNED_RULES, ROOT


PROTOCOLS = (("grpc", "native"), ("ws", "native"), ("ws", "twilio"), ("ws", "audiohook"))


def test_sigterm_ends_streaming_calls_on_every_protocol_with_their_summaries(redis_server, test_models, subscribe):
    """On SIGTERM, calls on every protocol (gRPC, native, Twilio, AudioHook; two each) that are still sending audio in
    real time each get their summary with reason server_shutdown, published on Redis, and sent to the bridge before
    the close where the protocol carries events (gRPC, native), then UNAVAILABLE / close 1013 (AudioHook: a disconnect
    saying so first); the process exits 0 well within the grace period."""
    prefix = f"term{os.getpid()}"
    env = dict(os.environ, CALLPULSE_REDIS_URL=redis_server.url, CALLPULSE_REDIS_PREFIX=prefix, CALLPULSE_MODEL=test_models["angry"],
               CALLPULSE_GRPC_PORT="0", CALLPULSE_WS_PORT="0", CALLPULSE_METRICS_PORT="-1", CALLPULSE_THREADS="1",
               CALLPULSE_RULES=PINNED_RULES, CALLPULSE_SHUTDOWN_GRACE_S="10")
    sub = subscribe([f"{prefix}:calls"])
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("{") and json.loads(line).get("event") == "ready":
                ready = json.loads(line)
                break
        assert ready, "the server did not become ready"
        results = {}

        def call(name, transport, protocol):
            target = f"grpc://127.0.0.1:{ready['grpc_port']}" if transport == "grpc" else f"ws://127.0.0.1:{ready['ws_port']}"
            plan = CallPlan(call_id=name, agent_id="a", team="t", roles=("customer", "agent"), speed=1, protocol=protocol)
            results[name] = run_call(target, str(CALL_WAV), plan)

        names = {f"term-{transport}-{protocol}-{i}": (transport, protocol) for transport, protocol in PROTOCOLS for i in range(2)}
        threads = [threading.Thread(target=call, args=(name, *how)) for name, how in names.items()]
        for t in threads:
            t.start()
        time.sleep(8.0)  # every call is in the customer's speech, sending audio
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        took = time.monotonic() - signalled
        for t in threads:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0 and took < 10
    for name, (transport, protocol) in names.items():
        result = results[name]
        if protocol == "native":  # gRPC and the native WebSocket protocol carry events back
            summaries = result.of("summary")
            assert len(summaries) == 1 and summaries[0]["document"]["reason"] == "server_shutdown", name
            assert result.of("emotion"), name  # the call was being scored when the server stopped
            assert result.error is not None and result.error["code"] == "UNAVAILABLE", (name, result.error)
            assert result.error["message"].startswith("the server is shutting down; the call was ended and its summary published")
        elif protocol == "audiohook":
            assert result.error is not None and result.error["code"] == "DISCONNECT_ERROR", (name, result.error)
            assert result.error["message"].startswith("the server is shutting down"), name
        if transport == "ws":
            assert result.close_code == 1013, (name, result.close_code, result.error)
    published = sub.wait_for(lambda m: m[1].get("type") == "call_summary", timeout=5)
    assert sorted(m[1]["call_id"] for m in published) == sorted(names)
    assert {m[1]["reason"] for m in published} == {"server_shutdown"}
    ended = [m for m in sub.messages if m[1].get("type") == "call_ended"]
    assert ended == []  # no call was cut short without its summary
