"""Rules hot reload: a changed file takes effect in a call already running; an invalid file keeps the old rules."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from clients.wavfile import read_wav
from service.config import AnalyticsConfig
from tests.conftest import CALL_WAV, ROOT, TIMINGS, service_config

NEVER = """
rules:
  - id: never
    speaker: customer
    all: [{emotion: [happy], min: 0.99, for: 60s}]
"""

ANGRY = """
rules:
  - id: reloaded-anger
    speaker: customer
    all: [{emotion: [angry], min: 0.6, for: 2s}]
    notify: [agent]
    message: reloaded rule
"""

INVALID = """
rules:
  - id: broken
    speaker: customer
    all: [{emotion: [angry], min: 7, for: 2s}]
"""


def _write(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)  # editors and config maps swap the file; the watcher must see it


async def _stream_with_reload(server, sub, rules_path):
    """Stream the agent's greeting, change the rules, wait for the reload, then stream the customer's complaint."""
    audio = read_wav(str(CALL_WAV)).samples
    customer_starts = int(TIMINGS["call_stereo_8k.wav"]["customer_speech"][0][0] * 8000)
    start = {"type": "start", "call_id": "reload-1", "agent_id": "rl", "team": "rl", "realtime": False,
             "audio": {"encoding": "pcm16le", "sample_rate_hz": 8000, "channels": 2}}
    events = []
    async with connect(server.ws_target) as ws:
        await ws.send(json.dumps(start))
        for offset in range(0, customer_starts - 4000, 1600):
            await ws.send(audio[offset:min(offset + 1600, customer_starts - 4000)].tobytes())
        _write(rules_path, ANGRY)
        reloaded = await asyncio.to_thread(sub.wait_for, lambda m: m[1].get("type") == "rules_reloaded", 10)
        assert reloaded and reloaded[0][1]["rules"] == ["reloaded-anger"] and reloaded[0][1]["trigger"] == "file_changed"
        for offset in range(customer_starts - 4000, len(audio), 1600):
            await ws.send(audio[offset:offset + 1600].tobytes())
        _write(rules_path, INVALID)
        failed = await asyncio.to_thread(sub.wait_for, lambda m: m[1].get("type") == "rules_reload_failed", 10)
        await ws.send(json.dumps({"type": "stop"}))
        try:
            async for message in ws:
                events.append(json.loads(message))
        except ConnectionClosed:
            pass
    return events, failed


def test_changed_rules_apply_to_a_running_call_and_invalid_ones_are_refused(redis_server, test_models, start_server,
                                                                           subscribe, tmp_path):
    """A rules file rewritten mid-call fires its new rule in that call; a later invalid file is reported and changes nothing."""
    rules_path = str(tmp_path / "rules.yaml")
    _write(rules_path, NEVER)
    config = replace(service_config(redis_server.url, test_models["angry"], rules_path=rules_path),
                     analytics=AnalyticsConfig(rules_poll_s=0.1))
    server = start_server(config)
    p = server.prefix
    sub = subscribe([f"{p}:calls", f"{p}:agent:rl"])
    events, failed = asyncio.run(_stream_with_reload(server, sub, rules_path))
    alerts = [e for e in events if e["type"] == "alert"]
    assert [a["rule_id"] for a in alerts] == ["reloaded-anger"]
    assert alerts[0]["start_ms"] >= TIMINGS["call_stereo_8k.wav"]["customer_speech"][0][0] * 1000 - 300
    assert events[-1]["type"] == "summary"
    assert failed, "the invalid rules file was not reported"
    errors = failed[0][1]["errors"]
    assert errors == [f"{rules_path}:5:35: rule 'broken'.all[0].min: expected a number between 0 and 1, got 7"]
    assert [r.id for r in server.app.rule_engine.rules.rules] == ["reloaded-anger"]
    assert server.app.rules_reloader.last_error is not None


def test_sighup_reloads_the_rules_of_a_running_server(redis_server, test_models, tmp_path, subscribe):
    """`kill -HUP` makes a served process reload its rules (polling off); an invalid file is refused with its line."""
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(NEVER)
    prefix = f"hup{os.getpid()}"
    env = dict(os.environ, CALLPULSE_RULES=str(rules_path), CALLPULSE_RULES_POLL_S="0", CALLPULSE_REDIS_URL=redis_server.url,
               CALLPULSE_REDIS_PREFIX=prefix, CALLPULSE_MODEL=test_models["angry"], CALLPULSE_GRPC_PORT="0",
               CALLPULSE_WS_PORT="0", CALLPULSE_METRICS_PORT="-1", CALLPULSE_THREADS="1")
    sub = subscribe([f"{prefix}:calls"])
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("{") and json.loads(line).get("event") == "ready":
                break
        else:
            raise AssertionError("the server did not become ready")
        rules_path.write_text(ANGRY)
        proc.send_signal(signal.SIGHUP)
        reloaded = sub.wait_for(lambda m: m[1].get("type") == "rules_reloaded", 10)
        assert reloaded and reloaded[0][1]["trigger"] == "signal" and reloaded[0][1]["rules"] == ["reloaded-anger"]
        rules_path.write_text(INVALID)
        proc.send_signal(signal.SIGHUP)
        failed = sub.wait_for(lambda m: m[1].get("type") == "rules_reload_failed", 10)
        assert failed and ":5:35: rule 'broken'.all[0].min" in failed[0][1]["errors"][0]
        assert proc.poll() is None, "SIGHUP must not stop the server"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert "rules reload (signal) failed; the previous rules stay in effect" in stderr
