"""Alert subscriber (agent desktop / supervisor console stand-in): prints alerts from Redis as JSON lines.

    python -m clients.subscribe --redis-url redis://127.0.0.1:6379/0 (--agent ID | --supervisor TEAM | --all)
                                [--tenant T] [--since STREAM_ID] [--with-channel] [--count N] [--timeout S]

Pub/sub delivers only what is published while subscribed (at most once). Every published alert
starts with its `stream_id`, the id of its durable copy in the `{prefix}:alerts` stream; a desktop
that reconnects passes the last one it showed as `--since` (or `0` for everything the stream still
holds) and first gets the alerts it missed from the stream, then the live ones, each alert once:
the subscription is opened before the stream is read, and alerts seen in both are printed once.
--all also prints the calls channel (call lifecycle and summaries; with --since, the missed alerts
of every agent). --with-channel wraps each line as {"channel": ..., "message": ...}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import deque

import redis

STREAM_PAGE = 500
REMEMBERED_IDS = 10000
_STREAM_ID = re.compile(r"^(0|\d+-\d+|\d+)$")


def base(args: argparse.Namespace) -> str:
    """Where this subscriber's names live: {prefix} or, for an authenticated tenant, {prefix}:{tenant}."""
    return f"{args.prefix}:{args.tenant}" if args.tenant else args.prefix


def channels_for(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(channels, patterns) to subscribe to."""
    if args.all:
        return [], [f"{base(args)}:*"]
    if args.agent:
        return [f"{base(args)}:agent:{args.agent}"], []
    return [f"{base(args)}:supervisor:{args.supervisor}"], []


def wanted(args: argparse.Namespace, document: dict) -> str | None:
    """The channel a stream alert would have been published on for this subscriber, or None if not for it."""
    notify = document.get("notify", [])
    if args.all:
        return f"{base(args)}:alerts"
    if args.agent:
        return f"{base(args)}:agent:{args.agent}" if "agent" in notify and document.get("agent_id") == args.agent else None
    if "supervisor" in notify and document.get("team") == args.supervisor:
        return f"{base(args)}:supervisor:{args.supervisor}"
    return None


class Printer:
    """Prints each alert once (by alert_id), up to --count."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.printed = 0
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    @property
    def done(self) -> bool:
        return bool(self.args.count) and self.printed >= self.args.count

    def show(self, channel: str, document: dict) -> None:
        alert_id = document.get("alert_id")
        if alert_id is not None:
            if alert_id in self._seen:
                return
            self._seen.add(alert_id)
            self._order.append(alert_id)
            if len(self._order) > REMEMBERED_IDS:
                self._seen.discard(self._order.popleft())
        text = json.dumps({"channel": channel, "message": document} if self.args.with_channel else document)
        print(text, flush=True)
        self.printed += 1


def replay(client: redis.Redis, args: argparse.Namespace, printer: Printer) -> None:
    """Print the stream's alerts after --since that are meant for this subscriber."""
    start = args.since if args.since == "0" else f"({args.since}"
    stream = f"{base(args)}:alerts"
    while not printer.done:
        entries = client.xrange(stream, min=start, max="+", count=STREAM_PAGE)
        if not entries:
            return
        for entry_id, fields in entries:
            entry = entry_id.decode()
            document = json.loads(fields[b"document"])
            channel = wanted(args, document)
            if channel is not None:
                printer.show(channel, {"stream_id": entry, **document})
                if printer.done:
                    return
            start = f"({entry}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.subscribe", description=__doc__.split("\n")[0])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--prefix", default="agentassist")
    p.add_argument("--tenant", default="", help="the tenant whose channels to read (services with caller authentication)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", help="agent id: that agent's pop-ups")
    who.add_argument("--supervisor", help="team: that team's escalations")
    who.add_argument("--all", action="store_true", help="every channel under the prefix")
    p.add_argument("--since", help="first print the alerts after this stream id (0: all the stream holds), then live ones")
    p.add_argument("--with-channel", action="store_true")
    p.add_argument("--count", type=int, default=0, help="exit after this many messages (0 = run until stopped)")
    p.add_argument("--timeout", type=float, default=0, help="exit after this many seconds (0 = no limit)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.since is not None and not _STREAM_ID.match(args.since):
        print(f"error: --since expects a stream id such as 1700000000000-0 (or 0), got {args.since!r}", file=sys.stderr)
        return 2
    client = redis.Redis.from_url(args.redis_url)
    pubsub = client.pubsub()
    channels, patterns = channels_for(args)
    printer = Printer(args)
    early: list[dict] = []  # live messages that arrived while the subscription was being confirmed
    try:
        if channels:
            pubsub.subscribe(*channels)
        if patterns:
            pubsub.psubscribe(*patterns)
        # The stream is read only once the server confirmed the subscription, so that no alert falls
        # between the two; the ones in both are printed once.
        confirmed, deadline = 0, time.monotonic() + 10
        while confirmed < len(channels) + len(patterns):
            if time.monotonic() > deadline:
                raise redis.TimeoutError("the subscription was not confirmed within 10 s")
            message = pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            if message["type"] in ("subscribe", "psubscribe"):
                confirmed += 1
            elif message["type"] in ("message", "pmessage"):
                early.append(message)
        print(json.dumps({"subscribed": channels + patterns, "since": args.since}), file=sys.stderr, flush=True)
        if args.since is not None:
            replay(client, args, printer)
    except redis.RedisError as exc:
        print(f"error: cannot subscribe at {args.redis_url}: {exc}", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    try:
        while not printer.done and (deadline is None or time.monotonic() < deadline):
            message = early.pop(0) if early else pubsub.get_message(timeout=0.2)
            if message is None or message["type"] not in ("message", "pmessage"):
                continue
            printer.show(message["channel"].decode(), json.loads(message["data"]))
    except KeyboardInterrupt:
        pass
    finally:
        pubsub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
