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
