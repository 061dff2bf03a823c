"""Alert subscriber (agent desktop / supervisor console stand-in): prints alerts from Redis as JSON lines.

    python -m clients.subscribe --redis-url redis://127.0.0.1:6379/0 (--agent ID | --supervisor TEAM | --all)

--all also prints the calls channel (call lifecycle and summaries). Pub/sub delivers only what is
published while subscribed. --with-channel wraps each line as {"channel": ..., "message": ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import redis


def channels_for(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(channels, patterns) to subscribe to."""
    if args.all:
        return [], [f"{args.prefix}:*"]
    if args.agent:
        return [f"{args.prefix}:agent:{args.agent}"], []
    return [f"{args.prefix}:supervisor:{args.supervisor}"], []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.subscribe", description=__doc__.split("\n")[0])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--prefix", default="agentassist")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", help="agent id: that agent's pop-ups")
    who.add_argument("--supervisor", help="team: that team's escalations")
    who.add_argument("--all", action="store_true", help="every channel under the prefix")
    p.add_argument("--with-channel", action="store_true")
    p.add_argument("--count", type=int, default=0, help="exit after this many messages (0 = run until stopped)")
    p.add_argument("--timeout", type=float, default=0, help="exit after this many seconds (0 = no limit)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = redis.Redis.from_url(args.redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    channels, patterns = channels_for(args)
    try:
        if channels:
            pubsub.subscribe(*channels)
        if patterns:
            pubsub.psubscribe(*patterns)
    except redis.RedisError as exc:
        print(f"error: cannot subscribe at {args.redis_url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"subscribed": channels + patterns}), file=sys.stderr, flush=True)
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    seen = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message is None or message["type"] not in ("message", "pmessage"):
                continue
            channel = message["channel"].decode()
            text = message["data"].decode()
            if args.with_channel:
                text = json.dumps({"channel": channel, "message": json.loads(text)})
            print(text, flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        pubsub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
