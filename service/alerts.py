"""Alerts: the versioned alert document, and the publisher that sends alerts and call events to Redis.

Channels (prefix configurable, default `agentassist`):
  {prefix}:agent:{agent_id}      pop-ups for that agent's desktop        (PUBLISH)
  {prefix}:supervisor:{team}     escalations for that team's supervisors (PUBLISH)
  {prefix}:calls                 call lifecycle and summaries            (PUBLISH)
  {prefix}:alerts                durable copy of every alert             (XADD, capped)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service import metrics
from service.config import RedisConfig
from service.domain import Alert, CallConfig
from service.rules import RuleMatch

log = logging.getLogger(__name__)

ALERT_SCHEMA_VERSION = 1
MAX_BACKOFF_S = 2.0


def wall_time_iso(epoch: float | None = None) -> str:
    """UTC timestamp with milliseconds, e.g. 2026-11-21T12:00:00.123Z."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def build_alert(match: RuleMatch, call: CallConfig, model_name: str, latency_ms: float) -> Alert:
    """Turn a rule match into an Alert whose document carries every schema field and the evidence."""
    rule = match.rule
    alert_id = uuid.uuid4().hex
    loudness = [p.loudness_dbfs for c in match.conditions for p in c.points]
    document: dict[str, Any] = {
        "schema_version": ALERT_SCHEMA_VERSION,
        "type": "alert",
        "alert_id": alert_id,
        "rule_id": rule.id,
        "severity": rule.severity.label,
        "call_id": call.call_id,
        "agent_id": call.agent_id,
        "team": call.team,
        "tenant": call.tenant,
        "speaker": match.speaker.value,
        "start_ms": match.start_ms,
        "fired_ms": match.fired_ms,
        "wall_time": wall_time_iso(),
        "evidence": {
            "reason": match.reason,
            "conditions": [
                {
                    "kind": "emotion",
                    "labels": list(c.labels),
                    "min": c.min,
                    "for_ms": c.for_ms,
                    "held_ms": c.held_ms,
                    "mean_score": c.mean_score,
                    "series": [
                        {
                            "start_ms": p.start_ms,
                            "end_ms": p.end_ms,
                            "score": p.score,
                            "top_label": p.top_label,
                            "loudness_dbfs": p.loudness_dbfs,
                        }
                        for p in c.points
                    ],
                }
                for c in match.conditions
            ],
            "prosody": {"loudness_dbfs_mean": round(sum(loudness) / len(loudness), 1) if loudness else None},
        },
        "message": rule.message,
        "notify": list(rule.notify),
        "model": model_name,
        "degraded": match.degraded,
        "latency_ms": round(latency_ms, 1),
    }
    return Alert(
        alert_id=alert_id,
        rule_id=rule.id,
        severity=rule.severity,
        speaker=match.speaker,
        start_ms=match.start_ms,
        fired_ms=match.fired_ms,
        message=rule.message,
        degraded=match.degraded,
        latency_ms=latency_ms,
        notify=rule.notify,
        document=document,
    )


class Channels:
    """Redis names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

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


_STOP = object()


@dataclass
class _Outgoing:
    kind: str  # "alert" or "call"
    document: dict[str, Any]
    agent_id: str = ""
    team: str = ""
    notify: tuple[str, ...] = ()
    arrival: float = 0.0


class AlertPublisher:
    """Publishes in order from a bounded queue on one task; Redis errors are retried with backoff.

    While Redis is unreachable, items wait in the queue (bounded by `publish_queue`; a new item
    that finds it full is dropped, logged and counted). Calls are never blocked by Redis.
    """

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.channels = Channels(config.prefix)
        self._queue: asyncio.Queue[_Outgoing] = asyncio.Queue(maxsize=config.publish_queue)
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self.dropped = 0

    async def start(self) -> None:
        self._redis = aioredis.from_url(self.config.url, socket_connect_timeout=2, socket_timeout=5)
        self._task = asyncio.create_task(self._run(), name="alert-publisher")

    def publish_alert(self, alert: Alert, call: CallConfig, arrival: float) -> None:
        """Queue an alert for its agent (and supervisor) channel and the durable stream."""
        self._enqueue(_Outgoing("alert", alert.document, call.agent_id, call.team, alert.notify, arrival))

    def publish_call_event(self, document: dict[str, Any]) -> None:
        """Queue a call lifecycle event or summary for the calls channel."""
        self._enqueue(_Outgoing("call", document))

    def _enqueue(self, item: _Outgoing) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            metrics.error("publish_queue_full")
            log.error("publish queue full (%d items): a %s event was dropped", self._queue.maxsize, item.kind)

    async def stop(self, timeout: float = 5.0) -> None:
        """Publish what is queued (up to `timeout`), then close the connection."""
        if self._task is None:
            return
        self._closing = True
        try:
            self._queue.put_nowait(_STOP)
        except asyncio.QueueFull:
            pass  # the loop checks `_closing` after each item
        # Cancelling a task inside a redis-py call can be swallowed there, so the loop is asked to
        # end and every wait is bounded; cancellation is the last resort.
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        if not done:
            log.error("%d events not published before shutdown", self._queue.qsize())
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)
        self._task = None
        if self._redis is not None:
            try:
                await asyncio.wait_for(self._redis.aclose(), 2.0)
            except (asyncio.TimeoutError, RedisError, OSError):
                pass

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is _STOP:
                return
            backoff = 0.05
            while True:
                try:
                    await self._send(item)
                    break
                except (RedisError, OSError) as exc:
                    metrics.publish_failed()
                    log.warning("redis publish failed (%s); retrying in %.2fs", type(exc).__name__, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(MAX_BACKOFF_S, backoff * 2)
            if self._closing and self._queue.empty():
                return

    async def _send(self, item: _Outgoing) -> None:
        assert self._redis is not None
        if item.kind == "call":
            await self._redis.publish(self.channels.calls, json.dumps(item.document))
            return
        document = dict(item.document)
        latency_s = time.monotonic() - item.arrival
        document["latency_ms"] = round(latency_s * 1000, 1)
        payload = json.dumps(document)
        async with self._redis.pipeline(transaction=True) as pipe:
            if "agent" in item.notify:
                pipe.publish(self.channels.agent(item.agent_id), payload)
            if "supervisor" in item.notify:
                pipe.publish(self.channels.supervisor(item.team), payload)
            pipe.xadd(
                self.channels.alerts_stream,
                {"alert_id": document["alert_id"], "call_id": document["call_id"], "document": payload},
                maxlen=self.config.stream_maxlen,
                approximate=True,
            )
            await pipe.execute()
        metrics.alert_latency(latency_s)
