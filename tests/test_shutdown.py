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


def test_sigterm_ends_active_calls_with_summaries_and_exits_within_the_grace_period(redis_server, test_models, subscribe):
    """On SIGTERM a gRPC call and a WebSocket call streaming in real time each get their summary (reason
    server_shutdown, published on Redis too) and then UNAVAILABLE / close 1013; the process exits 0 well within the grace."""
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

        def call(name, target, protocol):
            plan = CallPlan(call_id=name, agent_id="a", team="t", roles=("customer", "agent"), speed=1, protocol=protocol)
            results[name] = run_call(target, str(CALL_WAV), plan)

        threads = [
            threading.Thread(target=call, args=("term-grpc", f"grpc://127.0.0.1:{ready['grpc_port']}", "native")),
            threading.Thread(target=call, args=("term-ws", f"ws://127.0.0.1:{ready['ws_port']}", "native")),
        ]
        for t in threads:
            t.start()
        time.sleep(8.0)  # both calls are in the customer's speech
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
    for name in ("term-grpc", "term-ws"):
        result = results[name]
        summaries = result.of("summary")
        assert len(summaries) == 1 and summaries[0]["document"]["reason"] == "server_shutdown", name
        assert result.error is not None and result.error["code"] == "UNAVAILABLE", result.error
        assert result.error["message"].startswith("the server is shutting down; the call was ended and its summary published")
        assert result.of("emotion"), name  # the call was being scored when the server stopped
    assert results["term-ws"].close_code == 1013
    published = sub.wait_for(lambda m: m[1].get("type") == "call_summary" and m[1]["reason"] == "server_shutdown", timeout=5)
    assert {m[1]["call_id"] for m in published} == {"term-grpc", "term-ws"}
