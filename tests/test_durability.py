"""Alert durability: Redis killed and restarted mid-call, and a service restarted with alerts still in its disk spill."""

import json
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import replace

import numpy as np
import redis
from redis.crc import key_slot

from clients.bridge import CallPlan, run_call
from clients.wavfile import read_wav, write_wav
from service.config import AnalyticsConfig, RedisConfig, WindowConfig
from tests.conftest import CUSTOMER_WAV, RedisServer, service_config

RULES = """
rules:
  - id: pause
    silence: {ge: 1s}
    cooldown: 0s
    notify: [agent]
    message: a pause
"""


class KillableRedis(RedisServer):
    """A redis-server that writes every command to its append-only file, so that it can be SIGKILLed and come back."""

    def arguments(self) -> list[str]:
        return super().arguments() + ["--appendonly", "yes", "--appendfsync", "always"]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None


def pauses_wav(tmp_path, repeats=8, gap_s=1.5):
    """16 kHz mono: the customer utterance `repeats` times with `gap_s` of silence after each (one pause alert per gap)."""
    speech = read_wav(str(CUSTOMER_WAV)).samples[:, 0]
    gap = np.zeros(int(16000 * gap_s), np.int16)
    audio = np.concatenate([np.concatenate([speech, gap]) for _ in range(repeats)])
    path = tmp_path / "pauses.wav"
    write_wav(str(path), 16000, audio[:, None])
    return str(path)


def config_for(redis_url, model, rules_path, **redis_overrides):
    config = service_config(redis_url, model, rules_path=rules_path,
                            windows=WindowConfig(max_pending_windows=512), analytics=AnalyticsConfig(rules_poll_s=0))
    return replace(config, redis=replace(config.redis, **redis_overrides))


def stream_ids(url, prefix):
    entries = redis.Redis.from_url(url, decode_responses=True).xrange(f"{prefix}:alerts")
    return [e[1]["alert_id"] for e in entries]


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_redis_killed_and_restarted_mid_call_loses_and_duplicates_no_alert(test_models, start_server, tmp_path):
    """Redis is SIGKILLed while a call raises alerts and comes back: the call goes on, readiness says degraded meanwhile,
    and afterwards the stream holds every alert the bridge saw exactly once, in the order they fired."""
    own = KillableRedis(tmp_path / "redis")
    own.start()
    try:
        rules = tmp_path / "rules.yaml"
        rules.write_text(RULES)
        server = start_server(config_for(own.url, test_models["neutral"], str(rules)))
        plan = CallPlan(call_id="dur-1", agent_id="a1", team="t1", roles=("customer",), speed=3)
        result = {}
        call = threading.Thread(target=lambda: result.update(r=run_call(server.target, pauses_wav(tmp_path), plan)))
        call.start()
        time.sleep(2.0)
        own.kill()
        readiness = (0, "")
        deadline = time.monotonic() + 3.0
        while not readiness[1].startswith("degraded") and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.app.ws_port}/readyz", timeout=5) as response:
                readiness = (response.status, response.read().decode())
            time.sleep(0.2)
        time.sleep(max(0.0, deadline - time.monotonic()))
        own.start()
        call.join(60)
        outcome = result["r"]
        assert outcome.error is None
        fired = [(a["fired_ms"], a["alert_id"]) for a in outcome.of("alert")]
        assert len(fired) >= 6
        assert readiness[0] == 200 and readiness[1].startswith("degraded: redis unreachable")
        ids = [alert_id for _, alert_id in sorted(fired)]
        assert wait_for(lambda: len(stream_ids(own.url, server.prefix)) >= len(ids))
        time.sleep(0.5)  # nothing more may arrive
        assert stream_ids(own.url, server.prefix) == ids
        assert server.app.publisher.connected and server.app.publisher.backlog == 0
    finally:
        own.stop()


def test_alerts_spilled_to_disk_reach_redis_after_a_service_restart(test_models, start_server, tmp_path):
    """With Redis down and a memory queue of 2, a call's alerts go to the disk spill; the service stops, a new one starts
    on the same spill with Redis back, and every alert reaches the stream once, in order."""
    own = KillableRedis(tmp_path / "redis")
    own.start()
    own.kill()
    spill = tmp_path / "spill"
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = config_for(own.url, test_models["neutral"], str(rules), publish_queue=2, spill_dir=str(spill))
    try:
        first = start_server(config)
        plan = CallPlan(call_id="dur-2", agent_id="a2", team="t2", roles=("customer",), speed=0)
        outcome = run_call(first.target, pauses_wav(tmp_path), plan)
        assert outcome.error is None
        ids = [a["alert_id"] for a in sorted(outcome.of("alert"), key=lambda a: a["fired_ms"])]
        assert len(ids) >= 6
        first.stop()
        spilled = [json.loads(line) for f in sorted(spill.iterdir()) for line in f.read_text().splitlines()]
        assert [r["id"] for r in spilled if r["kind"] == "alert"] == ids
        assert any(r["kind"] == "call" and r["document"]["type"] == "call_summary" for r in spilled)
        own.start()
        second = start_server(config)
        assert wait_for(lambda: len(stream_ids(own.url, config.redis.prefix)) >= len(ids))
        assert wait_for(lambda: second.app.publisher.backlog == 0)
        assert stream_ids(own.url, config.redis.prefix) == ids
        assert list(spill.iterdir()) == []
    finally:
        own.stop()


def test_delivery_is_idempotent_by_id(redis_server):
    """Sending the same alert twice (a retry after a lost reply) leaves one stream entry and one pop-up, and one
    delivered-id key in the stream's cluster slot."""
    import asyncio

    from service.alerts import AlertPublisher

    async def main():
        publisher = AlertPublisher(RedisConfig(url=redis_server.url, prefix="idem"))
        await publisher.start()
        client = redis_server.client()
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe("idem:agent:a")
        item = {"kind": "alert", "id": "same-id", "channels": ["idem:agent:a"], "arrival_wall": time.time(),
                "document": {"alert_id": "same-id", "call_id": "c", "type": "alert"}}
        await publisher._send(item)
        await publisher._send(item)
        await publisher.stop()
        messages = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.1)
            if message:
                messages.append(message)
        pubsub.close()
        return client.xrange("idem:alerts"), messages, client.keys("{idem:alerts}:*")

    entries, messages, marks = asyncio.run(main())
    assert [e[1]["alert_id"] for e in entries] == ["same-id"] and len(messages) == 1
    # The delivered-id key shares the stream's Redis Cluster slot (the script touches both).
    assert marks == ["{idem:alerts}:delivered:same-id"] and key_slot(marks[0].encode()) == key_slot(b"idem:alerts")


def test_subscriber_since_replays_missed_alerts_then_follows_live_ones_once(redis_server, test_models, start_server,
                                                                          tmp_path):
    """A desktop that reconnects with --since the last stream id it showed gets every later alert exactly once, the
    missed ones from the stream first, then the live ones, and never another agent's."""
    import os
    import sys

    from tests.conftest import ROOT

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = service_config(redis_server.url, test_models["neutral"], rules_path=str(rules),
                            windows=WindowConfig(max_pending_windows=512), analytics=AnalyticsConfig(rules_poll_s=0))
    server = start_server(config)
    wav = pauses_wav(tmp_path, repeats=4)
    missed = run_call(server.target, wav, CallPlan(call_id="since-1", agent_id="a3", team="t3", roles=("customer",), speed=0))
    other = run_call(server.target, wav, CallPlan(call_id="since-x", agent_id="someone-else", team="t3", roles=("customer",), speed=0))
    assert missed.error is None and other.error is None
    assert wait_for(lambda: len(stream_ids(redis_server.url, server.prefix)) == len(missed.of("alert")) + len(other.of("alert")))
    entries = redis.Redis.from_url(redis_server.url, decode_responses=True).xrange(f"{server.prefix}:alerts")
    mine = [(entry_id, fields["alert_id"]) for entry_id, fields in entries if json.loads(fields["document"])["agent_id"] == "a3"]
    assert len(mine) >= 3
    last_shown = mine[0][0]  # the desktop showed the first alert, then went offline
    expected_replay = [alert_id for _, alert_id in mine[1:]]
    live_count = 3
    proc = subprocess.Popen(
        [sys.executable, "-m", "clients.subscribe", "--redis-url", redis_server.url, "--prefix", server.prefix,
         "--agent", "a3", "--since", last_shown, "--count", str(len(expected_replay) + live_count), "--timeout", "60"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    assert "subscribed" in proc.stderr.readline()
    live = run_call(server.target, wav, CallPlan(call_id="since-2", agent_id="a3", team="t3", roles=("customer",), speed=0))
    assert live.error is None and len(live.of("alert")) >= live_count
    out, _ = proc.communicate(timeout=60)
    printed = [json.loads(line) for line in out.splitlines()]
    assert [p["alert_id"] for p in printed[:len(expected_replay)]] == expected_replay
    live_ids = [a["alert_id"] for a in sorted(live.of("alert"), key=lambda a: a["fired_ms"])][:live_count]
    assert [p["alert_id"] for p in printed[len(expected_replay):]] == live_ids
    assert all(p["agent_id"] == "a3" and "-" in p["stream_id"] for p in printed)
    assert len({p["alert_id"] for p in printed}) == len(printed)


def spill_records(directory):
    """The records in a spill directory, in the order it would send them."""
    return [json.loads(line) for f in sorted(directory.glob("spill-*.jsonl")) for line in f.read_text().splitlines()]


def make_alert(n):
    """An alert and its call, built directly (no rules), for publisher-level tests."""
    from service.domain import Alert, AudioFormat, CallConfig, Encoding, Role, Severity

    call = CallConfig(f"call-{n}", "agent-1", "team-1", "", AudioFormat(Encoding.PCM16LE, 16000, (Role.CUSTOMER,)))
    alert_id = f"alert-{n}"
    document = {"type": "alert", "alert_id": alert_id, "call_id": call.call_id, "n": n}
    return Alert(alert_id, "r", Severity.HIGH, Role.CUSTOMER, 0, 0, "m", False, 0.0, ("agent",), document), call


class SilentRedis:
    """A TCP server that accepts connections and reads what is sent, and never answers (a hung Redis)."""

    def __init__(self) -> None:
        import socket

        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._connections = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self._connections.append(connection)
            threading.Thread(target=self._drain, args=(connection,), daemon=True).start()

    @staticmethod
    def _drain(connection) -> None:
        try:
            while connection.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        import socket

        for sock in [self._server, *self._connections]:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it; close alone would not
            except OSError:
                pass
            sock.close()


def test_events_redis_does_not_acknowledge_move_to_the_spill_within_spill_after_ms(tmp_path):
    """With a Redis that takes the connection but never answers, queued alerts are in the spill files, in order, once
    spill_after_ms has passed - while the publisher still runs."""
    import asyncio

    from service.alerts import AlertPublisher

    silent = SilentRedis()
    spill = tmp_path / "spill"

    async def main():
        publisher = AlertPublisher(RedisConfig(url=f"redis://127.0.0.1:{silent.port}/0", prefix="slow", spill_dir=str(spill),
                                               spill_after_ms=50))
        await publisher.start()
        await asyncio.sleep(0.05)
        assert publisher.connected  # the PING has not failed: Redis looks reachable, just slow
        for n in range(3):
            publisher.publish_alert(*make_alert(n), arrival=time.monotonic())
        await asyncio.sleep(0.3)
        on_disk = [r["id"] for r in spill_records(spill)]
        backlog = publisher.backlog
        silent.close()
        await publisher.stop(timeout=1.0)
        return on_disk, backlog

    try:
        on_disk, backlog = asyncio.run(main())
    finally:
        silent.close()
    assert on_disk == ["alert-0", "alert-1", "alert-2"] and backlog == 3


def test_an_event_moved_to_the_spill_while_its_send_is_in_flight_is_delivered_once(redis_server, tmp_path):
    """A send that Redis acknowledges only after spill_after_ms: the queue moves to the spill meanwhile, the in-flight
    event is sent again from there, and every alert and call event still reaches Redis exactly once, in order."""
    import asyncio

    from service.alerts import AlertPublisher

    prefix = f"inflight{time.monotonic_ns()}"
    client = redis_server.client()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{prefix}:agent:agent-1", f"{prefix}:calls")
    spill = tmp_path / "spill"

    async def main():
        publisher = AlertPublisher(RedisConfig(url=redis_server.url, prefix=prefix, spill_dir=str(spill), spill_after_ms=50))
        await publisher.start()
        real_send, gate, sent = publisher._send, asyncio.Event(), []

        async def slow_first_send(item):
            sent.append(item["id"])
            if len(sent) == 1:
                await gate.wait()  # Redis is slow to answer the first one
            await real_send(item)

        publisher._send = slow_first_send
        publisher.publish_alert(*make_alert(0), arrival=time.monotonic())
        publisher.publish_call_event({"type": "call_started", "call_id": "call-0"})
        publisher.publish_alert(*make_alert(1), arrival=time.monotonic())
        await asyncio.sleep(0.3)
        spilled = [r["id"] for r in spill_records(spill)]
        gate.set()
        deadline = time.monotonic() + 5
        while publisher.backlog and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        backlog = publisher.backlog
        await publisher.stop()
        return spilled, sent, backlog

    spilled, sent, backlog = asyncio.run(main())
    assert len(spilled) == 3 and spilled[0] == sent[0] == "alert-0"
    assert backlog == 0 and sent[:2] == ["alert-0", "alert-0"]  # sent again from the spill
    assert stream_ids(redis_server.url, prefix) == ["alert-0", "alert-1"]
    messages = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and len(messages) < 3:
        message = pubsub.get_message(timeout=0.1)
        if message:
            messages.append(json.loads(message["data"]))
    while (message := pubsub.get_message(timeout=0.2)) is not None:  # nothing more may arrive
        messages.append(json.loads(message["data"]))
    pubsub.close()
    assert [m.get("alert_id") or m["type"] for m in messages] == ["alert-0", "call_started", "alert-1"]


def test_with_redis_down_an_alert_is_in_the_spill_when_publish_returns(tmp_path):
    """Once the publisher knows Redis is unreachable, publish_alert returns only after the alert is in the spill file."""
    import asyncio

    from service.alerts import AlertPublisher
    from tests.conftest import free_port

    spill = tmp_path / "spill"

    async def main():
        publisher = AlertPublisher(RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", prefix="down", spill_dir=str(spill)))
        await publisher.start()
        deadline = time.monotonic() + 5
        while publisher.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not publisher.connected
        found = []
        for n in range(3):
            publisher.publish_alert(*make_alert(n), arrival=time.monotonic())
            found.append([r["id"] for r in spill_records(spill)])  # no await: nothing else ran meanwhile
        await publisher.stop(timeout=0.5)
        return found

    assert asyncio.run(main()) == [["alert-0"], ["alert-0", "alert-1"], ["alert-0", "alert-1", "alert-2"]]


def serve_process(env):
    """Start `python -m service serve` and return (process, its JSON ready line)."""
    import sys

    from tests.conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{") and json.loads(line).get("event") == "ready":
            return proc, json.loads(line)
    proc.kill()
    raise AssertionError("the server did not become ready")


def test_sigkill_with_redis_down_loses_no_alert_the_bridge_saw(test_models, tmp_path):
    """With Redis down, a service SIGKILLed right after a call loses none of the alerts its bridge saw: a new service on
    the same spill delivers each of them to the stream exactly once, in order, once Redis is up."""
    import os

    own = RedisServer(tmp_path / "redis")  # its port is chosen; nothing listens there until start()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    prefix = f"kill{os.getpid()}"
    env = dict(os.environ, CALLPULSE_REDIS_URL=own.url, CALLPULSE_REDIS_PREFIX=prefix, CALLPULSE_MODEL=test_models["neutral"],
               CALLPULSE_GRPC_PORT="0", CALLPULSE_WS_PORT="0", CALLPULSE_METRICS_PORT="-1", CALLPULSE_THREADS="1",
               CALLPULSE_RULES=str(rules), CALLPULSE_RULES_POLL_S="0", CALLPULSE_SPILL_DIR=str(tmp_path / "spill"))
    first, ready = serve_process(env)
    try:
        plan = CallPlan(call_id="kill-1", agent_id="a9", team="t9", roles=("customer",), speed=0)
        outcome = run_call(f"grpc://127.0.0.1:{ready['grpc_port']}", pauses_wav(tmp_path, repeats=4), plan)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert outcome.error is None
    ids = [a["alert_id"] for a in sorted(outcome.of("alert"), key=lambda a: a["fired_ms"])]
    assert len(ids) >= 3
    assert list((tmp_path / "spill").iterdir()) == [tmp_path / "spill" / "worker-1"]  # a pod's worker spills on its own
    own.start()
    second = None
    try:
        second, _ = serve_process(env)  # a new pod on the same spill directory
        assert wait_for(lambda: len(stream_ids(own.url, prefix)) >= len(ids), timeout=15)
        time.sleep(0.5)  # nothing more arrives
        assert stream_ids(own.url, prefix) == ids
    finally:
        if second is not None:
            second.terminate()
            second.wait(30)
        own.stop()


def test_a_failing_spill_is_reported_and_makes_readiness_fail_while_redis_is_down(test_models, start_server, tmp_path):
    """A spill write that fails later (disk full) is reported by degraded(); while Redis is also down /readyz answers
    503 because events are being dropped, and both clear once the spill takes an event again."""
    import errno
    import urllib.error

    from tests.conftest import free_port

    config = config_for(f"redis://127.0.0.1:{free_port()}/0", test_models["neutral"], str(tmp_path / "unused.yaml"),
                        spill_dir=str(tmp_path / "spill"))
    (tmp_path / "unused.yaml").write_text(RULES)
    server = start_server(config)
    publisher = server.app.publisher
    assert wait_for(lambda: not publisher.connected, timeout=5)

    def readyz():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.app.ws_port}/readyz", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    real_append = publisher._spill.append

    def disk_full(record):
        raise OSError(errno.ENOSPC, "No space left on device")

    publisher._spill.append = disk_full
    server.call(lambda: publisher.publish_call_event({"type": "call_started", "call_id": "c1"}))
    degraded = server.call(server.app.degraded)
    assert "disk spill failing: [Errno 28] No space left on device" in degraded
    status, body = readyz()
    assert status == 503 and body.startswith("not ready: redis unreachable") and "disk spill failing" in body
    publisher._spill.append = real_append
    server.call(lambda: publisher.publish_call_event({"type": "call_started", "call_id": "c2"}))
    status, body = readyz()
    assert status == 200 and body.startswith("degraded: redis unreachable") and "failing" not in body
    assert publisher.spill_error is None
