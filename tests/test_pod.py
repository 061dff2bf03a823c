"""The served pod: a supervisor, a model engine and two ingest workers as real processes on shared ports, with real
Redis - alerts over gRPC and WebSocket, one /metrics for all processes, a worker or the engine killed mid-call, SIGTERM."""

import itertools
import re
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import psutil
import grpc
import pytest

from clients.bridge import CallPlan, grpc_channel, run_call
from clients.wavfile import read_wav, write_wav
from tests.conftest import CALL_WAV, PINNED_RULES, ROOT


class Pod:
    """`python -m service serve --workers N` as a subprocess, with its ready line (ports and pids)."""

    def __init__(self, redis_url, model, prefix, workers=2, **env):
        self.prefix = prefix
        environment = dict(os.environ, CALLPULSE_REDIS_URL=redis_url, CALLPULSE_REDIS_PREFIX=prefix, CALLPULSE_MODEL=model,
                           CALLPULSE_GRPC_PORT="0", CALLPULSE_WS_PORT="0", CALLPULSE_METRICS_PORT="0", CALLPULSE_THREADS="1",
                           CALLPULSE_RULES=PINNED_RULES, CALLPULSE_SHUTDOWN_GRACE_S="10", CALLPULSE_WORKERS=str(workers), **env)
        self.log = tempfile.NamedTemporaryFile("w+", prefix="pod-", suffix=".log")
        self.proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        deadline = time.monotonic() + 120
        self.ready = None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("{") and json.loads(line).get("event") == "ready":
                self.ready = json.loads(line)
                break
        if self.ready is None:
            self.proc.kill()
            raise AssertionError("the pod did not become ready")
        self.pids = self.ready["pids"]

    @property
    def grpc(self):
        return f"grpc://127.0.0.1:{self.ready['grpc_port']}"

    @property
    def ws(self):
        return f"ws://127.0.0.1:{self.ready['ws_port']}"

    def metrics(self) -> dict[str, float]:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.ready['metrics_port']}/metrics", timeout=10).read().decode()
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def readyz(self) -> int:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.ready['ws_port']}/readyz", timeout=2).status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def workers(self) -> list[int]:
        """Pids of the live worker processes (children of the supervisor other than the engine)."""
        engine = self.engine()
        return [c.pid for c in psutil.Process(self.proc.pid).children() if c.pid != engine and c.name().startswith("python")
                and c.is_running() and "resource_tracker" not in " ".join(c.cmdline())]

    def engine(self) -> int | None:
        for child in psutil.Process(self.proc.pid).children():
            if _has_torch(child.pid):
                return child.pid
        return None

    def calls_on(self, pid: int) -> int:
        """Established client connections a worker holds on the pod's ports."""
        ports = {self.ready["grpc_port"], self.ready["ws_port"]}
        return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
                   if c.status == psutil.CONN_ESTABLISHED and c.laddr.port in ports)

    def stop(self):
        self.log.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_CONNECTIONS = itertools.count(10_000)


def _has_torch(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return "libtorch" in fh.read()
    except OSError:
        return False


def _calls(target_of, plans, wav, results, on_event=None, channels=None):
    channel_of = dict(zip((p.call_id for p in plans), channels or ()))
    threads = [threading.Thread(target=lambda p=p: results.update(
        {p.call_id: run_call(target_of(p), wav, p, on_event=on_event, channel=channel_of.get(p.call_id))})) for p in plans]
    for t in threads:
        t.start()
    return threads


def _channels_on_both_workers(pod, count, attempts=20):
    """`count` connected gRPC channels (a TCP connection each) of which each worker holds at least one.

    The kernel spreads connections over the workers' SO_REUSEPORT sockets by a hash of the addresses, so
    any one set may all land on one worker (1 in 512 for ten): such a set is closed and made again.
    """
    for _ in range(attempts):
        channels = [grpc_channel(pod.grpc.split("://", 1)[1], _plan("connect"), index=next(_CONNECTIONS)) for _ in range(count)]
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=30)
        if _wait(lambda: sum(pod.calls_on(pid) > 0 for pid in pod.workers()) == 2, timeout=2):
            return channels
        for channel in channels:
            channel.close()
    raise AssertionError(f"{attempts} sets of {count} connections all landed on one worker")


def _plan(call_id, protocol="native", speed=1.0):
    return CallPlan(call_id=call_id, agent_id=f"ag-{call_id}", team="t", roles=("customer", "agent"), speed=speed, protocol=protocol)


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.fixture(scope="module")
def pod(redis_server, test_models):
    pod = Pod(redis_server.url, test_models["angry"], f"pod{os.getpid()}")
    yield pod
    pod.stop()


def test_a_pod_of_two_workers_raises_every_alert_and_sums_its_metrics(pod):
    """Ten live calls over gRPC and WebSocket spread over both workers each get their one alert; the pod's one /metrics
    counts the calls and alerts of both workers; the engine alone has torch loaded."""
    before = pod.metrics()
    plans = [_plan(f"pod-{i}") for i in range(10)]
    results = {}
    threads = _calls(lambda p: pod.grpc if int(p.call_id.split("-")[1]) % 2 else pod.ws, plans, str(CALL_WAV), results)
    time.sleep(6.0)  # every call is connected and streaming
    workers = pod.workers()
    spread = {pid: pod.calls_on(pid) for pid in workers}
    for t in threads:
        t.join(120)
    assert len(workers) == 2 and all(n > 0 for n in spread.values()) and sum(spread.values()) == 10, spread
    for plan in plans:
        result = results[plan.call_id]
        assert result.error is None and len(result.of("alert")) == 1 and result.of("summary"), plan.call_id
    after = pod.metrics()
    completed = 'callpulse_calls_total{outcome="completed"}'
    assert after[completed] - before.get(completed, 0) == 10
    alerts = 'callpulse_alerts_total{rule="customer-angry-sustained",severity="high"}'
    assert after[alerts] - before.get(alerts, 0) == 10
    assert after["callpulse_pod_processes{kind=\"worker\"}"] == 2 and after["callpulse_pod_cpu_seconds_total"] > 0
    assert pod.engine() is not None and not any(_has_torch(pid) for pid in workers)
    log = open(pod.log.name).read()
    assert log.count("event loop: uvloop.Loop") == 3  # the engine and both workers


def test_a_killed_worker_is_restarted_while_the_other_workers_calls_go_on_then_sigterm_drains_every_worker(
        redis_server, test_models, subscribe):
    """SIGKILL of one worker during live calls: its calls' connections drop (the bridge sees an error) while every call on
    the other worker ends with its alert; the supervisor restarts the worker and the pod serves on both again. Then
    SIGTERM with calls on every worker: each call gets its summary (reason server_shutdown), and every process of the
    pod exits within the grace period."""
    pod = Pod(redis_server.url, test_models["angry"], f"podkill{os.getpid()}")
    channels = []
    try:
        plans = [_plan(f"k-{i}") for i in range(10)]
        results = {}
        channels += _channels_on_both_workers(pod, len(plans))
        threads = _calls(lambda p: pod.grpc, plans, str(CALL_WAV), results, channels=channels)
        time.sleep(4.0)
        victim, survivor = sorted(pod.workers(), key=pod.calls_on, reverse=True)
        on_victim = pod.calls_on(victim)
        os.kill(victim, signal.SIGKILL)
        for t in threads:
            t.join(120)
        failed = [p.call_id for p in plans if results[p.call_id].error is not None]
        fine = [p.call_id for p in plans if results[p.call_id].error is None]
        assert 0 < on_victim < 10 and len(failed) == on_victim, (on_victim, failed)
        assert {results[c].error["code"] for c in failed} <= {"UNAVAILABLE", "INTERNAL", "CANCELLED"}
        for call in fine:
            assert len(results[call].of("alert")) == 1 and results[call].of("summary"), call
        assert _wait(lambda: len(pod.workers()) == 2 and victim not in pod.workers() and pod.readyz() == 200, timeout=60)
        assert pod.metrics()['callpulse_pod_restarts_total{kind="worker"}'] == 1

        sub = subscribe([f"{pod.prefix}:calls"])
        plans = [_plan(f"t-{i}") for i in range(6)]
        results = {}
        channels += _channels_on_both_workers(pod, len(plans))
        threads = _calls(lambda p: pod.grpc, plans, str(CALL_WAV), results, channels=channels[-len(plans):])
        time.sleep(6.0)
        spread = [pod.calls_on(pid) for pid in pod.workers()]
        processes = [psutil.Process(pod.proc.pid), *psutil.Process(pod.proc.pid).children()]
        signalled = time.monotonic()
        pod.proc.send_signal(signal.SIGTERM)
        code = pod.proc.wait(30)
        took = time.monotonic() - signalled
        for t in threads:
            t.join(30)
        assert all(n > 0 for n in spread) and len(spread) == 2, spread
        assert code == 0 and took < 10, (code, took)
        gone, alive = psutil.wait_procs(processes, timeout=5)
        assert alive == [], [" ".join(p.cmdline())[-80:] for p in alive]
        for plan in plans:
            result = results[plan.call_id]
            summaries = result.of("summary")
            assert len(summaries) == 1 and summaries[0]["document"]["reason"] == "server_shutdown", plan.call_id
            assert result.error["code"] == "UNAVAILABLE"
        published = sub.wait_for(lambda m: m[1].get("type") == "call_summary" and m[1]["call_id"].startswith("t-"), timeout=5)
        assert sorted(m[1]["call_id"] for m in published) == sorted(p.call_id for p in plans)
    finally:
        for channel in channels:
            channel.close()
        pod.stop()


def test_a_killed_engine_fails_windows_at_once_and_scoring_resumes_after_its_restart(redis_server, test_models, tmp_path):
    """SIGKILL of the engine during a live call: the call does not hang, its updates meanwhile are marked degraded (the
    windows are dropped, counted), /readyz says not ready; the supervisor restarts the engine and the same call is
    scored again, ending with its summary."""
    pod = Pod(redis_server.url, test_models["neutral"], f"podengine{os.getpid()}", workers=1)
    try:
        audio = read_wav(str(CALL_WAV)).samples
        long_call = tmp_path / "long.wav"
        write_wav(str(long_call), 8000, np.concatenate([audio] * 4))  # 82 s (55 s at 1.5x), the customer speaks four times
        updates = []
        result = {}
        plan = _plan("engine-kill", speed=1.5)
        call = threading.Thread(target=lambda: result.update(r=run_call(pod.grpc, str(long_call), plan,
                                                                        on_event=lambda e: updates.append((time.monotonic(), e)))))
        call.start()
        time.sleep(5.0)  # the customer speaks
        engine = pod.engine()
        os.kill(engine, signal.SIGKILL)
        killed = time.monotonic()
        statuses = []
        while call.is_alive() and time.monotonic() - killed < 90:
            statuses.append((time.monotonic(), pod.readyz()))
            time.sleep(0.25)
        call.join(90)
        outcome = result["r"]
        assert outcome.error is None and outcome.of("summary")
        assert any(code == 503 for _, code in statuses)
        back = next((t for t, code in statuses if t > killed and code == 200 and any(c == 503 for s, c in statuses if s < t)), None)
        assert back is not None, "readiness did not come back while the call ran"
        emotions = [(t, e) for t, e in updates if e.get("type") == "emotion"]
        assert any(e["degraded"] for t, e in emotions if t > killed)  # the windows lost to the outage show
        assert any(t > back for t, e in emotions)  # scored again after the restart
        speakers = outcome.of("summary")[0]["document"]["speakers"]
        assert sum(s["windows_dropped"] for s in speakers) > 0
        assert pod.engine() not in (None, engine)
    finally:
        pod.stop()


def test_workers_start_once_the_engine_is_ready(redis_server, test_models):
    """The supervisor starts the engine alone and the workers only once it is ready, so that the model's load and
    warm-up have the machine to themselves."""
    pod = Pod(redis_server.url, test_models["neutral"], f"podorder{os.getpid()}", workers=2, CALLPULSE_LOG_LEVEL="INFO")
    try:
        pod.log.flush()
        lines = open(pod.log.name, encoding="utf-8").read().splitlines()
        engine_ready = next(i for i, line in enumerate(lines) if "the engine is ready" in line)
        first_worker = next(i for i, line in enumerate(lines) if "[worker-" in line)
        assert first_worker > engine_ready
    finally:
        pod.stop()


def test_a_child_not_ready_within_the_start_timeout_is_killed(redis_server, test_models):
    """A child gets `start_timeout_s` to become ready (not the 15 s heartbeat); past it the supervisor kills it, and an
    engine that never got ready ends the pod with exit code 3 and says why."""
    environment = dict(os.environ, CALLPULSE_REDIS_URL=redis_server.url, CALLPULSE_MODEL=test_models["neutral"],
                       CALLPULSE_GRPC_PORT="0", CALLPULSE_WS_PORT="-1", CALLPULSE_METRICS_PORT="-1", CALLPULSE_WORKERS="1",
                       CALLPULSE_START_TIMEOUT_S="0.3")
    proc = subprocess.run([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3
    assert re.search(r"the engine is not ready \d+ s after its start; killing it", proc.stderr)
    assert "the engine exited (code -9) before it was ready: the pod cannot serve" in proc.stderr
    assert '"event": "ready"' not in proc.stdout
