"""Shared fixtures: a real redis-server on a free port, generated test checkpoints, an in-process server."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from service.config import InferenceConfig, RedisConfig, ServerConfig, ServiceConfig

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "clients" / "samples"
CALL_WAV = SAMPLES / "call_stereo_8k.wav"
CUSTOMER_WAV = SAMPLES / "customer_16k.wav"
TIMINGS = json.loads((SAMPLES / "timings.json").read_text())
PINNED_RULES = str(ROOT / "tests" / "data" / "sustained_anger.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process owned by the tests; it can be stopped and started again on the same port."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arguments(self) -> list[str]:
        """redis-server's command line (subclasses add persistence, ACLs or TLS)."""
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir)]

    def ping_client(self) -> redis.Redis:
        """A client that can PING the server once it is up."""
        return redis.Redis(port=self.port)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.arguments(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.ping_client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def test_models(tmp_path_factory) -> dict[str, str]:
    """UNTRAINED tiny test checkpoints: 'random' (seeded weights), 'angry' and 'neutral' (classifier favours that label)."""
    from service.inference.testmodel import make_test_model

    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, favor in (("random", None), ("angry", "angry"), ("neutral", "neutral")):
        path = str(root / name)
        make_test_model(path, size="tiny", favor=favor, seed=0)
        paths[name] = path
    return paths


def service_config(redis_url: str, model: str, **overrides) -> ServiceConfig:
    """A ServiceConfig for tests: loopback, ephemeral ports, a unique Redis prefix, the pinned sustained-anger
    rule; keyword arguments replace sections."""
    config = ServiceConfig(
        rules_path=PINNED_RULES,
        server=ServerConfig(host="127.0.0.1", grpc_port=0, ws_port=0, metrics_port=-1),
        inference=InferenceConfig(model=model, threads=1),
        redis=RedisConfig(url=redis_url, prefix=f"t{uuid.uuid4().hex[:10]}"),
    )
    return replace(config, **overrides)


class ServerThread:
    """Runs an App on its own event loop in a background thread (real gRPC server on port 0)."""

    def __init__(self, config: ServiceConfig, model=None) -> None:
        from service.app import App

        self.app = App(config, model=model)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.app.start())
        except BaseException as exc:  # surfaced in start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> "ServerThread":
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None:
            raise self._error
        return self

    @property
    def target(self) -> str:
        return f"grpc://127.0.0.1:{self.app.grpc_port}"

    @property
    def ws_target(self) -> str:
        return f"ws://127.0.0.1:{self.app.ws_port}"

    @property
    def prefix(self) -> str:
        return self.app.config.redis.prefix

    def call(self, fn, timeout: float = 30):
        """Run fn() on the server's loop and return its result."""

        async def wrapper():
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.app.stop(grace=1.0), self.loop).result(30)
        except TimeoutError:
            raise AssertionError(f"the server did not stop within 30 s; its tasks: {self._task_stacks()}") from None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _task_stacks(self) -> list:
        async def stacks():
            return [(t.get_name(), [f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno}" for f in t.get_stack()])
                    for t in asyncio.all_tasks()]

        return asyncio.run_coroutine_threadsafe(stacks(), self.loop).result(5)


@pytest.fixture
def start_server():
    """Factory: start_server(config, model=None) -> running ServerThread, stopped after the test."""
    servers: list[ServerThread] = []

    def start(config: ServiceConfig, model=None) -> ServerThread:
        server = ServerThread(config, model).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class Subscription:
    """Collects every (channel, document) published on some Redis channels, from a background thread."""

    def __init__(self, client: redis.Redis, channels: list[str]) -> None:
        self.messages: list[tuple[str, dict]] = []
        self._client = client  # the pool closes its connections when the client is collected
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(**{ch: self._on_message for ch in channels})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.01, daemon=True)

    def _on_message(self, message) -> None:
        self.messages.append((message["channel"], json.loads(message["data"])))

    def wait_for(self, predicate, timeout: float = 10.0) -> list[tuple[str, dict]]:
        """Messages matching predicate((channel, document)), waiting up to timeout for at least one."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in list(self.messages) if predicate(m)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def close(self) -> None:
        self._thread.stop()
        self._pubsub.close()


@pytest.fixture
def subscribe(redis_server):
    """Factory: subscribe([channels]) -> Subscription collecting (channel, document) pairs."""
    subs: list[Subscription] = []

    def make(channels: list[str]) -> Subscription:
        sub = Subscription(redis_server.client(), channels)
        subs.append(sub)
        return sub

    yield make
    for sub in subs:
        sub.close()


def run(coro):
    """Run a coroutine to completion on a fresh event loop (for sync tests driving async clients)."""
    return asyncio.run(coro)

