"""One pod: what its processes share, and how each of them runs.

The supervisor (service/supervisor.py) creates the shared state in memory it shares with its children
and starts them with the multiprocessing spawn method:
- the engine process (service/engine.py): the model, the only importer of torch and funasr;
- N ingest workers: each an App with the gRPC and WebSocket servers on the pod's ports
  (SO_REUSEPORT), whole calls each, scoring through the engine (RemoteScoringClient).
Shared (PodState): calls per worker (so that max_calls holds across the pod), the pod's resident
memory (max_rss_mb), each process's readiness and heartbeat. A child exits at once when its
supervisor is gone (it cannot be supervised any more; a new pod takes over the ports and spills).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import sys
import time
from dataclasses import replace

from service.config import ServiceConfig

log = logging.getLogger(__name__)

ENGINE = 0  # index of the engine in the readiness and heartbeat arrays; worker i is i + 1


class PodState:
    """Shared memory of one pod (created by the supervisor before its children, passed to them at spawn)."""

    def __init__(self, context, workers: int) -> None:
        self.workers = workers
        self._lock = context.Lock()
        self._calls = context.RawArray("q", workers)
        self._ready = context.RawArray("b", workers + 1)
        self._beats = context.RawArray("d", workers + 1)
        self._rss_mb = context.RawValue("d", 0.0)

    # -- admission (under the pod's lock) --------------------------------------------------

    def admit(self, worker: int, max_calls: int, per_worker: int) -> str | None:
        """Count a new call on `worker`; returns why it is refused, or None."""
        with self._lock:
            if self._calls[worker] >= per_worker:
                return (f"this worker carries its limit of {per_worker} calls (max_calls_per_worker); connect again to reach "
                        "another worker of the pod")
            if sum(self._calls) >= max_calls:
                return f"the server is at its limit of {max_calls} concurrent calls"
            self._calls[worker] += 1
        return None

    def release(self, worker: int) -> None:
        with self._lock:
            self._calls[worker] = max(0, self._calls[worker] - 1)

    def forget_worker(self, worker: int) -> None:
        """A worker died: its calls are gone."""
        with self._lock:
            self._calls[worker] = 0
        self._ready[worker + 1] = 0

    def calls(self) -> list[int]:
        return list(self._calls)

    # -- readiness, heartbeats, memory -----------------------------------------------------

    def set_ready(self, index: int, ready: bool) -> None:
        self._ready[index] = 1 if ready else 0

    def ready(self, index: int) -> bool:
        return bool(self._ready[index])

    def beat(self, index: int) -> None:
        self._beats[index] = time.monotonic()

    def last_beat(self, index: int) -> float:
        return self._beats[index]

    @property
    def rss_mb(self) -> float:
        """The pod's resident memory (all its processes), measured by the supervisor."""
        return self._rss_mb.value

    @rss_mb.setter
    def rss_mb(self, value: float) -> None:
        self._rss_mb.value = value

    def describe(self) -> str | None:
        """What of the pod is not there, or None."""
        missing = [f"worker {i + 1}" for i in range(self.workers) if not self._ready[i + 1]]
        return f"{', '.join(missing)} of {self.workers} restarting" if missing else None


class PodSlot:
    """A worker's view of the pod: its index and limits."""

    def __init__(self, state: PodState, worker: int, max_calls: int, per_worker: int) -> None:
        self.state = state
        self.worker = worker
        self.max_calls = max_calls
        self.per_worker = per_worker

    def admit(self) -> str | None:
        return self.state.admit(self.worker, self.max_calls, self.per_worker)

    def release(self) -> None:
        self.state.release(self.worker)


# -- the children's entry points (run in spawned processes) -------------------------------------------------


def _setup_logging(config: ServiceConfig, name: str) -> None:
    logging.basicConfig(level=config.log_level.upper(), format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s",
                        stream=sys.stderr)


def _exit_with_parent(loop: asyncio.AbstractEventLoop) -> None:
    """Exit at once when the supervisor is gone (its sentinel becomes readable)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def gone() -> None:
        log.error("the supervisor is gone; exiting")
        logging.shutdown()
        os._exit(1)

    loop.add_reader(parent.sentinel, gone)


async def _beat(state: PodState, index: int) -> None:
    while True:
        state.beat(index)
        await asyncio.sleep(1.0)


def _run(main) -> None:
    """Run a child's main coroutine on uvloop (its event loop costs a fraction of asyncio's per message)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def run_engine(config: ServiceConfig, endpoint: str, state: PodState, events) -> None:
    """The engine process: load the model, serve the workers until SIGTERM."""
    _setup_logging(config, "engine")
    from service.engine import install_stop_signals, serve_engine

    async def main() -> None:
        loop = asyncio.get_running_loop()
        log.info("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
        _exit_with_parent(loop)
        stop = asyncio.Event()
        install_stop_signals(stop)
        beating = asyncio.create_task(_beat(state, ENGINE))

        def ready(model: str) -> None:
            state.set_ready(ENGINE, True)
            events.put(("ready", ENGINE, os.getpid(), model))

        try:
            await serve_engine(config, endpoint, stop, on_ready=ready)
        finally:
            state.set_ready(ENGINE, False)
            beating.cancel()

    _run(main())


def run_worker(config: ServiceConfig, endpoint: str, state: PodState, worker: int, per_worker: int, events) -> None:
    """An ingest worker: an App scoring through the engine, serving until SIGTERM (drains its calls first)."""
    _setup_logging(config, f"worker-{worker + 1}")
    from service.app import App
    from service.inference.remote import RemoteScoringClient

    async def main() -> None:
        loop = asyncio.get_running_loop()
        _exit_with_parent(loop)
        in_flight = max(64, config.inference.queue_size // state.workers)
        scorer = RemoteScoringClient(endpoint, worker, max_in_flight=in_flight)
        app = App(config, scorer=scorer, pod=PodSlot(state, worker, config.server.max_calls, per_worker),
                  publishes_reloads=worker == 0)
        beating = asyncio.create_task(_beat(state, worker + 1))

        def ready(started: App) -> None:
            state.set_ready(worker + 1, True)
            events.put(("ready", worker + 1, os.getpid(), started.scorer.name if started.scorer else ""))

        try:
            await app.run_until_signalled(on_ready=ready)
        finally:
            state.set_ready(worker + 1, False)
            beating.cancel()

    _run(main())


def worker_config(config: ServiceConfig, worker: int, grpc_port: int, ws_port: int) -> ServiceConfig:
    """A worker's configuration: the pod's ports (shared with SO_REUSEPORT), no /metrics of its own (the
    supervisor serves the pod's), its own spill directory."""
    server = replace(config.server, grpc_port=grpc_port, ws_port=ws_port, metrics_port=-1, reuse_port=True)
    redis = config.redis
    if redis.spill_dir:
        redis = replace(redis, spill_dir=os.path.join(redis.spill_dir, f"worker-{worker + 1}"))
    return replace(config, server=server, redis=redis)


def ready_line(grpc_port: int, ws_port: int, metrics_port: int, model: str, pids: dict[str, int]) -> str:
    """The JSON line `serve` prints on stdout once the pod is ready (scripts using port 0 learn the ports)."""
    return json.dumps({"event": "ready", "grpc_port": grpc_port, "ws_port": ws_port, "metrics_port": metrics_port,
                       "model": model, "pids": pids})
