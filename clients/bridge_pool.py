"""Bridge pool: many concurrent calls from one bridge, spread over a few gRPC connections; refused calls tried again with back-off.

    python -m clients.bridge --target grpc://HOST:PORT --wav FILE --call-id C --agent-id A --team T --calls N [--channels C]

What a real bridge should do. A gRPC channel is one HTTP/2 connection and every call on it is a
stream of that connection, so whatever receives the connection receives all of its calls: the
workers of a CallPulse pod share their ports with SO_REUSEPORT and the kernel gives each new
connection to one of them, and a Kubernetes Service is an L4 balancer (kube-proxy picks a pod per
connection, never per call or stream), so a long-lived connection stays on the worker and the pod
it first reached. A bridge should therefore open one connection per few calls (here one per
CALLS_PER_CHANNEL by default) and spread its calls over them; when a call is refused with
UNAVAILABLE or RESOURCE_EXHAUSTED (WebSocket: HTTP 503 or close 1013; full, not ready or shutting
down) or cannot connect, try it again after an exponential back-off with jitter on another
connection, which may reach another worker or pod; a call ended with UNAVAILABLE after its summary
(a server shutting down) goes on as a new call. Within a cluster, several connections per bridge
spread calls only roughly; an L7, gRPC-aware balancer (Envoy, a service mesh, a gRPC ingress) or
client-side round-robin over the endpoints of a headless Service (`dns:///callpulse-headless:50051`
with the `round_robin` policy) spreads streams instead. WebSocket calls are one connection per call
by nature, so L4 balancing already spreads them call by call.
"""

from __future__ import annotations

import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from websockets.exceptions import InvalidStatus

from clients.bridge import Audio, CallPlan, CallResult, _run_grpc, grpc_channel, load_audio, run_call

CALLS_PER_CHANNEL = 10
RETRY_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "CLOSE_1013", "HTTP_503", "UNREACHABLE")
MAX_BACKOFF_S = 5.0


def default_channels(calls: int) -> int:
    """One gRPC connection per CALLS_PER_CHANNEL calls (at least one)."""
    return max(1, math.ceil(calls / CALLS_PER_CHANNEL))


def _refused_before_start(result: CallResult) -> bool:
    """The server turned the call away for now (full, not ready, stopping) before it began: nothing was analysed."""
    started = any(e.get("type") in ("started", "opened") for e in result.events)
    return result.error is not None and result.error.get("code") in RETRY_CODES and not started


def run_calls(
    target: str,
    wav_path: str,
    plans: list[CallPlan],
    channels: int | None = None,
    on_event: Callable[[CallPlan, dict[str, Any]], None] | None = None,
    retries: int = 5,
    backoff_s: float = 0.5,
    stagger_s: float = 0.0,
    hangup_after_s: float | None = None,
) -> list[CallResult]:
    """Stream every plan's call at once, call i starting after i * stagger_s; the results in the plans' order.

    gRPC targets: `channels` connections (default one per CALLS_PER_CHANNEL calls), call i on
    connection i mod channels. WebSocket targets: one connection per call. A call refused before it
    started is tried again up to `retries` times, after backoff_s * 2**k (at most MAX_BACKOFF_S, with
    jitter), on the next connection.
    """
    if not plans:
        return []
    grpc_target = target.startswith(("grpc://", "grpcs://"))
    count = (channels or default_channels(len(plans))) if grpc_target else 0
    address = target.split("://", 1)[1]
    pool = [grpc_channel(address, plans[0], target.startswith("grpcs://"), index=i) for i in range(count)]
    audio: dict[tuple, Audio] = {}
    audio_lock = threading.Lock()

    def audio_for(plan: CallPlan) -> Audio:
        with audio_lock:
            key = (plan.rate, plan.roles)
            if key not in audio:
                audio[key] = load_audio(wav_path, plan)
            return audio[key]

    def one(index: int) -> CallResult:
        plan = plans[index]
        time.sleep(index * stagger_s)
        forward = (lambda doc: on_event(plan, doc)) if on_event is not None else None
        attempt = 0
        while True:
            if grpc_target:
                result = _run_grpc(address, plan, audio_for(plan), forward, hangup_after_s,
                                   target.startswith("grpcs://"), pool[(index + attempt) % count])
            else:
                try:
                    result = run_call(target, wav_path, plan, forward, hangup_after_s)
                except InvalidStatus as exc:  # upgrade refused: 503 while full, not ready or stopping
                    result = CallResult(error={"code": f"HTTP_{exc.response.status_code}", "message": ""})
                except ConnectionError as exc:
                    result = CallResult(error={"code": "UNREACHABLE", "message": str(exc)})
            attempt += 1
            result.attempts = attempt
            if attempt > retries or not _refused_before_start(result):
                return result
            time.sleep(min(MAX_BACKOFF_S, backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5))

    try:
        with ThreadPoolExecutor(max(1, len(plans))) as executor:
            return list(executor.map(one, range(len(plans))))
    finally:
        for channel in pool:
            channel.close()
