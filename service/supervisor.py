"""The supervisor of one pod (`python -m service serve --workers N`): checks the configuration, starts the model
engine and N ingest workers, restarts any that dies or stops beating, forwards SIGHUP, drains on SIGTERM,
and serves the pod's one /metrics (prometheus-client multiprocess mode).

Like LiveKit Agents' supervised process pool: every child beats a shared heartbeat each second; one
that is ready and misses 15 s, or that is not ready `start_timeout_s` after its start (imports, model
load and warm-up can take much longer than a beat), is killed and restarted, as is one that exits. The
workers start once the engine is ready. A worker that dies takes its calls
with it (their bridges see the connection drop) while the other workers' calls go on; an engine that
dies makes the workers fail their pending windows at once and report not ready until the restarted
engine is back. On SIGTERM the workers drain first (every call ends with its summary), then the
engine stops; the pod exits within the shutdown grace. The children are started with the spawn
method before anything else of gRPC exists in this process (grpc's multiprocessing example).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time

from service.config import ServiceConfig
from service.pod import ENGINE, PodState, ready_line, run_engine, run_worker, worker_config

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_S = 15.0
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
POLL_S = 0.2


def _resident_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class _PodCollector:
    """The pod's own figures for /metrics: CPU and memory of all its processes, live processes and restarts."""

    def __init__(self, supervisor: "Supervisor") -> None:
        self._supervisor = supervisor

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        sup = self._supervisor
        pids = [os.getpid(), *(p.pid for p in list(sup._processes.values()) if p.pid)]
        cpu = CounterMetricFamily("callpulse_pod_cpu_seconds", "CPU time of the pod's live processes (supervisor, engine, workers)")
        cpu.add_metric([], sum(_cpu_seconds(pid) for pid in pids) + sup.exited_cpu_s)
        yield cpu
        yield GaugeMetricFamily("callpulse_pod_resident_memory_bytes", "Resident memory of the pod's processes",
                                value=sum(_resident_mb(pid) for pid in pids) * 2**20)
        live = GaugeMetricFamily("callpulse_pod_processes", "Live processes of the pod, by kind", labels=["kind"])
        live.add_metric(["engine"], float(any(i == ENGINE for i in sup._processes)))
        live.add_metric(["worker"], float(sum(1 for i in sup._processes if i != ENGINE)))
        yield live
        restarts = CounterMetricFamily("callpulse_pod_restarts", "Processes of the pod restarted after they died", labels=["kind"])
        for kind in ("engine", "worker"):
            restarts.add_metric([kind], float(sup.restarts[kind]))
        yield restarts


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Hold the pod's port (SO_REUSEPORT, not listening) so that port 0 means one port for every worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, sock.getsockname()[1]


class Supervisor:
    """Runs one pod until SIGTERM; `run` returns the exit status."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.workers = config.server.worker_count(os.cpu_count() or 1)
        self.per_worker = config.server.calls_per_worker(self.workers)
        self._stopping = False
        self._hangup = False
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[int, multiprocessing.Process] = {}
        self._ever_ready: set[int] = set()
        self._started_at: dict[int, float] = {}
        self._killed: set[int] = set()
        self._up: set[int] = set()  # ready since their latest start
        self._failures: dict[int, int] = {}
        self._restart_at: dict[int, float] = {}
        self._announced = False
        self._model = ""
        self.restarts = {"engine": 0, "worker": 0}
        self._last_cpu: dict[int, float] = {}
        self._next_sample = 0.0
        self.exited_cpu_s = 0.0
        """CPU time of the pod's processes that have exited (the counter must not go back when one is replaced)."""

    # -- setup ---------------------------------------------------------------------------

    def _check(self) -> None:
        """What would make every child fail, refused before any starts (exit 2 with the reason)."""
        from service.auth import load_tokens
        from service.rules import load_rules
        from service.spill import SPILL_MIN_FREE_BYTES, adopt_orphan_spills, check_spill_dir

        cfg = self.config
        load_rules(cfg.rules_path)
        load_tokens(cfg.server.auth_tokens, cfg.server.auth_tokens_file)
        if cfg.redis.spill_dir:
            check_spill_dir(cfg.redis.spill_dir, min(cfg.redis.spill_max_bytes, SPILL_MIN_FREE_BYTES))
            adopt_orphan_spills(cfg.redis.spill_dir, self.workers)
            for worker in range(self.workers):
                check_spill_dir(os.path.join(cfg.redis.spill_dir, f"worker-{worker + 1}"), 0)

    def run(self) -> int:
        cfg = self.config
        self._check()
        runtime = tempfile.mkdtemp(prefix="callpulse-pod-")
        metrics_dir = os.path.join(runtime, "metrics")
        os.mkdir(metrics_dir)
        # Read by prometheus-client in every child (spawned after this): their metrics go to files there.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        self._endpoint = f"ipc://{os.path.join(runtime, 'engine.sock')}"
        held = []
        try:
            grpc_sock, grpc_port = _reserve_port(cfg.server.host, cfg.server.grpc_port)
            held.append(grpc_sock)
            ws_port = -1
            if cfg.server.ws_port >= 0:
                ws_sock, ws_port = _reserve_port(cfg.server.host, cfg.server.ws_port)
                held.append(ws_sock)
            self._ports = (grpc_port, ws_port)
            self._metrics_port = self._serve_metrics(metrics_dir) if cfg.server.metrics_port >= 0 else -1
            self._state = PodState(self._context, self.workers)
            self._events = self._context.SimpleQueue()
            self._install_signals()
            log.info("starting a pod: 1 engine and %d worker(s), at most %d calls per worker", self.workers, self.per_worker)
            # The workers start once the engine is ready (_on_event): the model's load and warm-up then has the
            # machine to itself. On a 16-core H200 host, with 12 workers starting beside it, the engine was not
            # ready within 180 s; alone it was ready in 26-31 s and the 12 workers 1 s later.
            self._start(ENGINE)
            return self._supervise()
        finally:
            for sock in held:
                sock.close()
            self._kill_all()
            shutil.rmtree(runtime, ignore_errors=True)

    def _serve_metrics(self, metrics_dir: str) -> int:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=metrics_dir)
        registry.register(_PodCollector(self))
        server, _ = start_http_server(self.config.server.metrics_port, addr=self.config.server.host, registry=registry)
        return server.server_port

    def _install_signals(self) -> None:
        def stop(*_):
            self._stopping = True

        def hangup(*_):
            self._hangup = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hangup)

    def _start(self, index: int) -> None:
        cfg = self.config
        if index == ENGINE:
            process = self._context.Process(target=run_engine, args=(cfg, self._endpoint, self._state, self._events),
                                            name="callpulse-engine", daemon=False)
        else:
            worker = index - 1
            child = worker_config(cfg, worker, *self._ports)
            process = self._context.Process(target=run_worker, args=(child, self._endpoint, self._state, worker, self.per_worker,
                                                                     self._events), name=f"callpulse-worker-{index}", daemon=False)
        self._state.beat(index)  # the heartbeat clock starts at the start
        process.start()
        self._processes[index] = process
        self._started_at[index] = time.monotonic()

    # -- the supervision loop -------------------------------------------------------------

    def _supervise(self) -> int:
        while True:
            if self._stopping:
                return self._drain()
            if self._hangup:
                self._hangup = False
                for index, process in self._processes.items():
                    if index != ENGINE and process.is_alive():
                        os.kill(process.pid, signal.SIGHUP)
            sentinels = [p.sentinel for p in self._processes.values()]
            ready = multiprocessing.connection.wait([self._events._reader, *sentinels], timeout=POLL_S)
            while not self._events.empty():
                self._on_event(self._events.get())
            failed = self._reap(ready)
            if failed is not None:
                return failed
            self._check_heartbeats()
            self._restart_due()
            if time.monotonic() >= self._next_sample:  # the pod's memory and CPU, once a second
                self._next_sample = time.monotonic() + 1.0
                self._state.rss_mb = sum(_resident_mb(p.pid) for p in self._processes.values() if p.pid) + _resident_mb(os.getpid())
                self._last_cpu = {i: _cpu_seconds(p.pid) for i, p in self._processes.items() if p.pid}

    def _on_event(self, event: tuple) -> None:
        kind, index, pid, info = event
        if kind != "ready":
            return
        first_engine = index == ENGINE and ENGINE not in self._ever_ready
        self._ever_ready.add(index)
        self._up.add(index)
        if first_engine:  # the workers start once, when the engine is ready the first time
            for worker in range(self.workers):
                self._start(worker + 1)
        self._failures[index] = 0
        self._model = info or self._model
        log.info("%s is ready (pid %d)", "the engine" if index == ENGINE else f"worker {index}", pid)
        if not self._announced and all(self._state.ready(i) for i in range(self.workers + 1)):
            self._announced = True
            pids = {("engine" if i == ENGINE else f"worker-{i}"): p.pid for i, p in self._processes.items()}
            print(ready_line(*self._ports, self._metrics_port, self._model, pids), flush=True)

    def _reap(self, ready: list) -> int | None:
        """Notice children that exited: schedule their restart; an engine that never got ready fails the pod."""
        for index, process in list(self._processes.items()):
            if process.is_alive():
                continue
            code = process.exitcode
            self.exited_cpu_s += self._last_cpu.pop(index, 0.0)
            what = "the engine" if index == ENGINE else f"worker {index}"
            self._forget(index, process)
            if index not in self._ever_ready and index == ENGINE:
                log.error("%s exited (code %s) before it was ready: the pod cannot serve", what, code)
                return 3
            failures = self._failures.get(index, 0)
            if failures >= len(RESTART_BACKOFF_S) and index not in self._ever_ready:
                log.error("%s failed %d times before it was ready: the pod cannot serve", what, failures)
                return 3
            self._failures[index] = failures + 1
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            log.error("%s exited (code %s); restarting it in %.1f s", what, code, delay)
            self._restart_at[index] = time.monotonic() + delay
        return None

    def _forget(self, index: int, process: multiprocessing.Process) -> None:
        from prometheus_client import multiprocess

        if index == ENGINE:
            self._state.set_ready(ENGINE, False)
        else:
            self._state.forget_worker(index - 1)
        if process.pid:
            multiprocess.mark_process_dead(process.pid)
        del self._processes[index]
        self._killed.discard(index)
        self._up.discard(index)
        process.close()

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, when in list(self._restart_at.items()):
            if now >= when and not self._stopping:
                del self._restart_at[index]
                self.restarts["engine" if index == ENGINE else "worker"] += 1
                self._start(index)

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for index, process in self._processes.items():
            if index in self._killed or not process.is_alive():
                continue
            what = "the engine" if index == ENGINE else f"worker {index}"
            if index not in self._up:
                if now - self._started_at[index] > self.config.server.start_timeout_s:
                    log.error("%s is not ready %.0f s after its start; killing it", what, now - self._started_at[index])
                    self._killed.add(index)
                    process.kill()
            elif now - self._state.last_beat(index) > HEARTBEAT_TIMEOUT_S:
                log.error("%s has not beaten for %.0f s; killing it", what, now - self._state.last_beat(index))
                self._killed.add(index)
                process.kill()

    # -- stopping -------------------------------------------------------------------------

    def _drain(self) -> int:
        """SIGTERM: the workers end their calls (with summaries) while the engine still scores, then the engine stops."""
        grace = self.config.server.shutdown_grace_s
        deadline = time.monotonic() + grace
        log.info("stopping the pod: draining %d worker(s)", self.workers)
        workers = [p for i, p in self._processes.items() if i != ENGINE and p.is_alive()]
        for process in workers:
            os.kill(process.pid, signal.SIGTERM)
        for process in workers:
            process.join(max(0.1, deadline - time.monotonic()))
        engine = self._processes.get(ENGINE)
        if engine is not None and engine.is_alive():
            os.kill(engine.pid, signal.SIGTERM)
            engine.join(max(1.0, deadline - time.monotonic()))
        self._kill_all()
        log.info("the pod stopped")
        return 0

    def _kill_all(self) -> None:
        for process in self._processes.values():
            try:
                if process.is_alive():
                    process.kill()
                    process.join(5)
            except ValueError:
                pass  # closed already


def serve_pod(config: ServiceConfig) -> int:
    """`python -m service serve`: run a pod until SIGTERM; returns the exit status."""
    return Supervisor(config).run()
