"""The command-line entry points as a person runs them: serve, bridge, subscribe, make-test-model, check-rules."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import CALL_WAV, PINNED_RULES, ROOT

PY = sys.executable
REQUIRED_METRICS = [
    "callpulse_active_calls", "callpulse_audio_seconds_total", "callpulse_vad_segments_total",
    "callpulse_inference_batch_size", "callpulse_inference_batch_seconds", "callpulse_inference_queue_depth",
    "callpulse_alerts_total", "callpulse_alert_latency_seconds", "callpulse_errors_total",
    "callpulse_emotion_update_latency_seconds",
]


def start_process(args, **kw):
    return subprocess.Popen([PY, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_ready(proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited: {proc.stderr.read()[-2000:]}")
            continue
        if line.startswith("{") and '"ready"' in line:
            return json.loads(line)
    raise AssertionError("serve did not become ready")


@pytest.fixture
def served(redis_server, test_models):
    env = dict(os.environ, CALLPULSE_REDIS_URL=redis_server.url, CALLPULSE_MODEL=test_models["angry"],
               CALLPULSE_REDIS_PREFIX="cli", CALLPULSE_RULES=PINNED_RULES)
    proc = start_process(["-m", "service", "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--ws-port", "0", "--metrics-port", "0",
                          "--threads", "1"], env=env)
    try:
        yield wait_ready(proc)
    finally:
        proc.terminate()
        proc.wait(30)


def test_served_process_runs_on_uvloop(redis_server):
    """`python -m service serve` runs the event loops of its engine and its worker on uvloop and says so in its log."""
    env = dict(os.environ, CALLPULSE_REDIS_URL=redis_server.url, CALLPULSE_REDIS_PREFIX="cli-loop", CALLPULSE_LOG_LEVEL="INFO")
    proc = start_process(["-m", "service", "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--ws-port", "-1",
                          "--metrics-port", "-1", "--model", "builtin:constant"], env=env)
    try:
        wait_ready(proc)
    finally:
        proc.terminate()
        proc.wait(30)
    loop_lines = [line for line in proc.stderr.read().splitlines() if "event loop:" in line]
    assert len(loop_lines) == 2 and all("event loop: uvloop.Loop" in line for line in loop_lines), loop_lines
    assert any("[engine]" in line for line in loop_lines) and any("[worker-1]" in line for line in loop_lines)


def test_serve_bridge_and_subscribers_end_to_end(served, redis_server):
    """serve (configured by environment and flags) + bridge + two subscribers: both subscribers print the alert."""
    base = ["-m", "clients.subscribe", "--redis-url", redis_server.url, "--prefix", "cli", "--count", "1", "--timeout", "60"]
    agent = start_process([*base, "--agent", "ag-1"])
    supervisor = start_process([*base, "--supervisor", "tm-1"])
    time.sleep(1.0)  # let both subscriptions register before the call starts
    bridge = subprocess.run(
        [PY, "-m", "clients.bridge", "--target", f"grpc://127.0.0.1:{served['grpc_port']}", "--wav", str(CALL_WAV),
         "--roles", "customer,agent", "--call-id", "cli-call", "--agent-id", "ag-1", "--team", "tm-1", "--speed", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert bridge.returncode == 0, bridge.stderr[-2000:]
    lines = [json.loads(l) for l in bridge.stdout.splitlines() if l.startswith("{")]
    kinds = [l["type"] for l in lines]
    assert kinds[0] == "started" and kinds[-1] == "summary" and "emotion" in kinds and "alert" in kinds
    alert_id = next(l for l in lines if l["type"] == "alert")["alert_id"]
    for proc in (agent, supervisor):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        printed = [json.loads(l) for l in out.splitlines() if l.strip()]
        assert [p["alert_id"] for p in printed] == [alert_id]
    assert served["model"].startswith("TEST MODEL")


def test_metrics_endpoint_exposes_the_pipeline(served):
    """/metrics serves every required series name."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{served['metrics_port']}/metrics", timeout=10).read().decode()
    for name in REQUIRED_METRICS:
        assert name in body, name


def test_bridge_reports_server_errors_with_status(served, tmp_path):
    """When the server refuses the call the bridge exits 3 and prints the status on stderr."""
    # a 16 kHz file sent as 16 kHz but declared roles for 2 channels on a mono file is a client error
    result = subprocess.run(
        [PY, "-m", "clients.bridge", "--target", f"grpc://127.0.0.1:{served['grpc_port']}", "--wav", str(CALL_WAV),
         "--call-id", "bad id", "--agent-id", "a", "--team", "t", "--speed", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 3
    error = json.loads(result.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "INVALID_ARGUMENT" and "call_id" in error["message"]


def test_make_test_model_cli_writes_a_loadable_untrained_checkpoint(tmp_path):
    """make-test-model writes funasr's layout and says it is an untrained test model."""
    out = tmp_path / "m"
    result = subprocess.run([PY, "-m", "service", "make-test-model", str(out), "--favor", "sad"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["trained"] is False and info["favor"] == "sad" and info["parameters"] < 500_000
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "model.pt", "tokens.txt"}


def test_check_rules_cli(tmp_path):
    """check-rules accepts the default file and rejects a bad one with exit 2 and one FILE:LINE:COLUMN error per bad rule."""
    ok = subprocess.run([PY, "-m", "service", "check-rules", "service/rules/default.yaml"], cwd=ROOT,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "4 rule(s) OK" in ok.stdout and "customer-upset-fast" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: loud\n    all: [{emotion: [angry], min: 2, for: 1s}]\n"
                   "  - id: quiet\n    silence: {ge: 5s}\n  - id: fast\n    speech_rate_spm: {above: 180}\n")
    result = subprocess.run([PY, "-m", "service", "check-rules", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"{bad}:3:35: rule 'loud'.all[0].min: expected a number between 0 and 1, got 2"
    assert lines[1].startswith(f"{bad}:7:23: rule 'fast'.speech_rate_spm.above: unknown key 'above'")
    assert lines[2] == f"{bad}: 2 error(s)"


def test_serve_refuses_bad_configuration(redis_server):
    """serve exits 2 with the variable's name when the environment is invalid."""
    env = dict(os.environ, CALLPULSE_GRPC_PORT="not-a-port")
    result = subprocess.run([PY, "-m", "service", "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "CALLPULSE_GRPC_PORT" in result.stderr
