"""Alerts: the versioned alert document, and the publisher that sends alerts and call events to Redis.

Channels (prefix configurable, default `agentassist`; `{prefix}:{tenant}` for authenticated tenants):
  {prefix}:agent:{agent_id}      pop-ups for that agent's desktop        (PUBLISH)
  {prefix}:supervisor:{team}     escalations for that team's supervisors (PUBLISH)
  {prefix}:calls                 call lifecycle and summaries            (PUBLISH)
  {prefix}:alerts                durable copy of every alert             (XADD, capped)
  {{prefix}:alerts}:delivered:{id}  delivered ids, for exactly-once delivery (SET NX with a TTL)

The delivered-id keys carry their stream's name as a Redis Cluster hash tag, so the delivery script's
two keys always share a slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service import metrics
from service.config import RedisConfig
from service.domain import Alert, CallConfig
from service.rules import RuleMatch
from service.spill import DiskSpill, SpillFull

log = logging.getLogger(__name__)

ALERT_SCHEMA_VERSION = 2
MAX_BACKOFF_S = 2.0
HEALTH_CHECK_S = 1.0  # an idle publisher checks Redis this often


def wall_time_iso(epoch: float | None = None) -> str:
    """UTC timestamp with milliseconds, e.g. 2026-11-21T12:00:00.123Z."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def build_alert(match: RuleMatch, call: CallConfig, model_name: str, latency_ms: float) -> Alert:
    """Turn a rule match into an Alert whose document carries every schema field and the evidence."""
    rule = match.rule
    alert_id = uuid.uuid4().hex
    document: dict[str, Any] = {
        "schema_version": ALERT_SCHEMA_VERSION,
        "type": "alert",
        "alert_id": alert_id,
        "rule_id": rule.id,
        "severity": match.severity.label,
        "call_id": call.call_id,
        "agent_id": call.agent_id,
        "team": call.team,
        "tenant": call.tenant,
        "speaker": match.speaker.value if match.speaker else None,
        "start_ms": match.start_ms,
        "fired_ms": match.fired_ms,
        "wall_time": wall_time_iso(),
        "evidence": {
            "reason": match.reason,
            "conditions": [
                {
                    "kind": c.kind,
                    "name": c.name,
                    "op": c.op,
                    "threshold": c.threshold,
                    "for_ms": c.for_ms,
                    "held_ms": c.held_ms,
                    "value": c.value,
                    "text": c.text,
                    "points": [{"start_ms": p.start_ms, "end_ms": p.end_ms, "value": p.value} for p in c.points],
                    **c.details,
                }
                for c in match.conditions
            ],
            "series": list(match.series),
        },
        "message": rule.message,
        "notify": list(match.notify),
        "occurrence": match.occurrence,
        "escalated": match.escalated,
        "model": model_name,
        "degraded": match.degraded,
        "latency_ms": round(latency_ms, 1),
    }
    return Alert(
        alert_id=alert_id,
        rule_id=rule.id,
        severity=match.severity,
        speaker=match.speaker,
        start_ms=match.start_ms,
        fired_ms=match.fired_ms,
        message=rule.message,
        degraded=match.degraded,
        latency_ms=latency_ms,
        notify=match.notify,
        document=document,
    )


class Channels:
    """Redis names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def for_tenant(self, tenant: str) -> "Channels":
        """The names of one tenant's calls: {prefix}:{tenant}:... (the prefix itself without a tenant)."""
        return Channels(f"{self.prefix}:{tenant}") if tenant else self

    def agent(self, agent_id: str) -> str:
        return f"{self.prefix}:agent:{agent_id}"

    def supervisor(self, team: str) -> str:
        return f"{self.prefix}:supervisor:{team}"

    @property
    def calls(self) -> str:
        return f"{self.prefix}:calls"

    @property
    def alerts_stream(self) -> str:
        return f"{self.prefix}:alerts"


class EventSink:
    """Where a call's alerts and lifecycle documents go (Redis in the service, memory in batch analysis)."""

    def publish_alert(self, alert: Alert, call: CallConfig, arrival: float) -> None:
        """Deliver an alert to its recipients; must not block."""
        raise NotImplementedError

    def publish_call_event(self, document: dict[str, Any]) -> None:
        """Deliver a call lifecycle event or summary; must not block."""
        raise NotImplementedError


# Atomically: remember the id (SET NX with a TTL), and only the first time XADD the alert to the
# stream and PUBLISH it. A retry after an ambiguous failure (the script ran, the reply was lost)
# finds the id and does nothing, so the stream holds every alert exactly once and pub/sub never
# shows a pop-up twice.
# KEYS[1] id key, KEYS[2] stream; ARGV[1] payload, ARGV[2] ttl s, ARGV[3] stream maxlen ('' = no
# stream), ARGV[4] alert_id, ARGV[5] call_id, ARGV[6..] channels.
# The published copy of an alert starts with "stream_id" (its entry in the stream) so that a desktop
# can resume from the last one it showed (`clients.subscribe --since`).
_DELIVER_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[2])) then return 0 end
local payload = ARGV[1]
if ARGV[3] ~= '' then
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'alert_id', ARGV[4], 'call_id', ARGV[5], 'document', ARGV[1])
  payload = '{"stream_id": "' .. id .. '", ' .. string.sub(ARGV[1], 2)
end
for i = 6, #ARGV do redis.call('PUBLISH', ARGV[i], payload) end
return 1
"""


class AlertPublisher(EventSink):
    """Delivers alerts and call events to Redis in order, each exactly once, without ever blocking a call.

    One task sends from a bounded in-memory queue (`publish_queue` items) and, behind it, a disk spill
    (`spill_dir`, at most `spill_max_bytes`). With a spill, an event stays in memory only while Redis
    is known to be reachable, and at most `spill_after_ms`:
    - while Redis is known to be unreachable (`connected` False) a new event is written to the spill
      in `publish_alert` / `publish_call_event` itself, so it is in the operating system before the
      session tells the bridge about it;
    - when Redis has not acknowledged the oldest event in memory `spill_after_ms` after it was queued
      (Redis slow, or a send that hangs), a timer moves the whole memory queue to the front of the
      spill, and so does a failed send.
    Once the spill holds anything, new events go behind it until it is drained, so the order is kept.
    A spill record is written to the operating system at once and fsynced on the spill's own thread
    (group commit): a crash of the process loses nothing that reached the spill, a power loss the
    last milliseconds. What a crash can lose is what is only in memory: events Redis has not
    acknowledged yet, queued less than `spill_after_ms` ago while Redis looked reachable.

    An event that fits nowhere (no spill and a full memory queue, a full spill, a spill that cannot
    be written) is dropped, logged and counted; a failing spill is also kept in `spill_error` until
    it works again. A failed send is retried with backoff (up to 2 s apart) until it succeeds; each
    item carries an id that Redis remembers for `dedup_ttl_s`, so a retry, or an event sent again from
    the spill after it was moved there while its send was in flight, is never delivered twice. At
    shutdown whatever could not be sent within the grace period is moved to the spill, which the next
    process sends first.
    """

    def __init__(self, config: RedisConfig, tenant_channels: bool = False) -> None:
        """`tenant_channels`: each call's alerts and events go under {prefix}:{tenant}: (authenticated tenants)."""
        self.config = config
        self.channels = Channels(config.prefix)
        self._tenant_channels = tenant_channels
        self._memory: deque[tuple[float, dict[str, Any]]] = deque()  # (time.monotonic() when queued, item)
        self._spill: DiskSpill | None = DiskSpill(config.spill_dir, config.spill_max_bytes) if config.spill_dir else None
        self._spill_after_s = config.spill_after_ms / 1000
        self._watchdog: asyncio.TimerHandle | None = None
        self._wakeup = asyncio.Event()
        self._redis: aioredis.Redis | None = None
        self._script = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self.connected = True
        """False while the last attempt to reach Redis failed (readiness reports degraded)."""
        self.spill_error: str | None = None
        """Why the last write to the disk spill failed (full, disk full, permissions); None once one succeeds
        or the spill is drained."""

    async def start(self) -> None:
        """Connect (lazily) and start the task that delivers what is queued."""
        options: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 5}
        if self.config.tls_ca_file:
            options["ssl_ca_certs"] = self.config.tls_ca_file
        self._redis = aioredis.from_url(self.config.url, **options)
        self._script = self._redis.register_script(_DELIVER_ONCE)
        self._task = asyncio.create_task(self._run(), name="alert-publisher")
        if self._spill is not None:
            self._arm_watchdog()  # for events queued before the start
        if self.backlog:
            self._wakeup.set()

    @property
    def backlog(self) -> int:
        """Items waiting to be delivered (memory and disk)."""
        return len(self._memory) + (len(self._spill) if self._spill is not None else 0)

    @property
    def losing_events(self) -> bool:
        """New events are being dropped: Redis is unreachable and the disk spill cannot take them."""
        return not self.connected and self.spill_error is not None

    def _names(self, tenant: str) -> Channels:
        return self.channels.for_tenant(tenant) if self._tenant_channels else self.channels

    def publish_alert(self, alert: Alert, call: CallConfig, arrival: float) -> None:
        """Queue an alert for its agent (and supervisor) channel and the durable stream."""
        names = self._names(call.tenant)
        channels = []
        if "agent" in alert.notify:
            channels.append(names.agent(call.agent_id))
        if "supervisor" in alert.notify:
            channels.append(names.supervisor(call.team))
        self._enqueue({"kind": "alert", "id": alert.alert_id, "document": alert.document, "channels": channels,
                       "stream": names.alerts_stream, "arrival_wall": time.time() - (time.monotonic() - arrival)})

    def publish_call_event(self, document: dict[str, Any]) -> None:
        """Queue a call lifecycle event or summary for the calls channel (of the call's tenant)."""
        names = self._names(str(document.get("tenant") or ""))
        self._enqueue({"kind": "call", "id": uuid.uuid4().hex, "document": document, "channels": [names.calls]})

    def _enqueue(self, item: dict[str, Any]) -> None:
        spill = self._spill
        if spill is not None and (not self.connected or len(spill) > 0):
            self._append_to_spill(item)
        elif len(self._memory) < self.config.publish_queue:
            self._memory.append((time.monotonic(), item))
            if spill is not None and self._watchdog is None and self._task is not None:
                self._arm_watchdog()
        elif spill is not None:
            self._append_to_spill(item)
        else:
            self._drop(item, f"publish queue full ({self.config.publish_queue} items) and no disk spill configured")
        metrics.publish_backlog(self.backlog)
        self._wakeup.set()

    def _append_to_spill(self, item: dict[str, Any]) -> None:
        assert self._spill is not None
        try:
            self._spill.append(item)
        except (SpillFull, OSError) as exc:
            self._spill_failed(exc)
            self._drop(item, str(exc))
            return
        self.spill_error = None
        metrics.publish_spilled()

    def _spill_failed(self, exc: Exception) -> None:
        if self.spill_error is None:
            log.error("the disk spill cannot take events: %s", exc)
        self.spill_error = str(exc)

    def _arm_watchdog(self) -> None:
        """Check the oldest event in memory when it has waited `spill_after_ms` (or, if it already has and
        the spill could not take it, `spill_after_ms` from now)."""
        if self._memory and not self._closing:
            due = max(self._memory[0][0] + self._spill_after_s - time.monotonic(), self._spill_after_s if self.spill_error else 0.0)
            self._watchdog = asyncio.get_running_loop().call_later(due, self._on_watchdog)

    def _on_watchdog(self) -> None:
        self._watchdog = None
        if self._memory and time.monotonic() - self._memory[0][0] >= self._spill_after_s:
            self._spill_memory(f"redis has not acknowledged an event within {self.config.spill_after_ms} ms")
        self._arm_watchdog()

    def _spill_memory(self, why: str) -> None:
        """Move every event in memory, in order, to the front of the spill (they are older than any event
        there: once the spill holds anything, new events go behind it). If the spill cannot take them they
        stay in memory."""
        if self._spill is None or not self._memory:
            return
        items = [item for _, item in self._memory]
        try:
            self._spill.prepend(items)
        except (SpillFull, OSError) as exc:
            self._spill_failed(exc)
            return
        self._memory.clear()
        self.spill_error = None
        for _ in items:
            metrics.publish_spilled()
        log.info("%s: %d event(s) moved from memory to the disk spill", why, len(items))

    def _drop(self, item: dict[str, Any], why: str) -> None:
        metrics.error("publish_queue_full")
        log.error("a %s event was dropped: %s", item["kind"], why)

    async def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to `timeout`), spill what is left, close the connection."""
        if self._task is None:
            return
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._wakeup.set()
        # Cancelling a task inside a redis-py call can be swallowed there, so the loop is asked to
        # end and every wait is bounded; cancellation is the last resort.
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        if not done:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)
        self._task = None
        self._keep_unsent()
        if self._spill is not None:
            self._spill.close()
        if self._redis is not None:
            try:
                await asyncio.wait_for(self._redis.aclose(), 2.0)
            except (asyncio.TimeoutError, RedisError, OSError):
                pass

    def _keep_unsent(self) -> None:
        """Move what is still in memory to the front of the disk spill (it is older than anything there)."""
        if not self._memory:
            return
        if self._spill is None:
            log.error("%d events not published before shutdown (no disk spill configured)", len(self._memory))
            return
        items = [item for _, item in self._memory]
        self._memory.clear()
        try:
            self._spill.prepend(items)
        except (SpillFull, OSError) as exc:
            for item in items:
                self._drop(item, str(exc))
            return
        log.warning("%d unsent events kept in the disk spill for the next start", len(items))

    def _head(self) -> tuple[dict[str, Any] | None, str]:
        if self._memory:
            return self._memory[0][1], "memory"
        if self._spill is not None:
            record = self._spill.peek()
            if record is not None:
                return record, "spill"
        return None, ""

    async def _run(self) -> None:
        await self._check_connection()  # know at once whether Redis is there: events go to the spill if not
        while True:
            item, source = self._head()
            if item is None:
                if self._closing:
                    return
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), HEALTH_CHECK_S)
                except asyncio.TimeoutError:
                    await self._check_connection()
                continue
            backoff = 0.05
            while True:
                try:
                    await self._send(item)
                    break
                except (RedisError, OSError) as exc:
                    if self.connected:
                        log.warning("redis unreachable (%s); %d events wait, retrying with backoff", type(exc).__name__, self.backlog)
                    self.connected = False
                    self._spill_memory("redis unreachable")
                    metrics.publish_failed()
                    if self._closing:
                        return  # stop() spills what is left
                    await asyncio.sleep(backoff)
                    backoff = min(MAX_BACKOFF_S, backoff * 2)
            if not self.connected:
                log.info("redis reachable again; %d events still to send", self.backlog - 1)
            self.connected = True
            if source == "memory":
                # The watchdog may have moved the item to the spill while it was being sent: it is sent
                # again from there, and Redis ignores it by its id.
                if self._memory and self._memory[0][1] is item:
                    self._memory.popleft()
            else:
                assert self._spill is not None
                self._spill.take()
                if not len(self._spill):
                    self.spill_error = None
            metrics.publish_backlog(self.backlog)

    async def _check_connection(self) -> None:
        """While idle, PING now and then so that readiness shows Redis going away before an alert needs it."""
        assert self._redis is not None
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            if self.connected:
                log.warning("redis unreachable (%s)", type(exc).__name__)
            self.connected = False
            return
        self.connected = True

    async def _send(self, item: dict[str, Any]) -> None:
        assert self._redis is not None and self._script is not None
        document = item["document"]
        if item["kind"] == "alert":
            latency_s = time.time() - item["arrival_wall"]
            document = {**document, "latency_ms": round(latency_s * 1000, 1)}
            stream_args = [self.config.stream_maxlen, document["alert_id"], document["call_id"]]
        else:
            stream_args = ["", "", ""]
        payload = json.dumps(document)
        stream = item.get("stream", self.channels.alerts_stream)
        delivered = await self._script(
            keys=[f"{{{stream}}}:delivered:{item['id']}", stream],
            args=[payload, self.config.dedup_ttl_s, *stream_args, *item["channels"]],
        )
        if item["kind"] == "alert" and delivered:
            metrics.alert_latency(latency_s)
