"""Faults from bridges: a connection dropped in the middle of a chunk, and 50 concurrent calls of which half send garbage."""

import asyncio
import base64
import json
import os
import random
import socket
import struct
import threading
import time
from dataclasses import replace

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from clients.bridge import CallPlan, run_call
from service.config import WindowConfig
from tests.conftest import CALL_WAV, service_config


def _masked_frame(opcode: int, payload: bytes, declared: int | None = None) -> bytes:
    """A client WebSocket frame (masked); `declared` lies about the payload length to cut it short."""
    length = len(payload) if declared is None else declared
    header = bytes([0x80 | opcode])
    if length < 126:
        header += bytes([0x80 | length])
    elif length < 65536:
        header += bytes([0x80 | 126]) + struct.pack(">H", length)
    else:
        header += bytes([0x80 | 127]) + struct.pack(">Q", length)
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _raw_native_call(port: int) -> socket.socket:
    """Open a native call by hand: HTTP upgrade, then the start message."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101")
    start = {"type": "start", "call_id": "cut-1", "agent_id": "a", "team": "t", "realtime": True,
             "audio": {"encoding": "pcm16le", "sample_rate_hz": 8000, "channels": 1}}
    sock.sendall(_masked_frame(0x1, json.dumps(start).encode()))
    return sock


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_bridge_disconnecting_in_the_middle_of_a_chunk_frees_its_call(redis_server, test_models, start_server, subscribe):
    """A bridge whose connection drops halfway through an audio frame leaves no session behind, publishes call_ended,
    and a call running beside it still ends with its alert."""
    server = start_server(service_config(redis_server.url, test_models["angry"]))
    sub = subscribe([f"{server.prefix}:calls"])
    healthy = {}
    beside = threading.Thread(target=lambda: healthy.update(r=run_call(
        server.target, str(CALL_WAV), CallPlan(call_id="beside", agent_id="a", team="t", roles=("customer", "agent"), speed=2))))
    beside.start()
    sock = _raw_native_call(server.app.ws_port)
    for _ in range(10):
        sock.sendall(_masked_frame(0x2, os.urandom(320)))  # 20 ms chunks of (noise) audio
        time.sleep(0.02)
    assert _wait(lambda: server.app.calls.active == 2)
    sock.sendall(_masked_frame(0x2, os.urandom(700), declared=1600)[:-1])  # the chunk is cut short...
    sock.close()  # ...and the connection drops
    assert _wait(lambda: server.app.calls.active <= 1)
    ended = sub.wait_for(lambda m: m[1].get("type") == "call_ended" and m[1]["call_id"] == "cut-1")
    assert ended and ended[0][1]["reason"] == "disconnected"
    beside.join(60)
    assert healthy["r"].error is None and len(healthy["r"].of("alert")) == 1
    assert _wait(lambda: server.app.calls.active == 0)


async def _garbage_call(url: str, rng: random.Random, index: int) -> int | None:
    """A native call that starts properly, sends some audio, then garbage of one kind."""
    start = {"type": "start", "call_id": f"junk-{index}", "agent_id": f"j{index}", "team": "junk", "framing": "seq64", "realtime": False,
             "audio": {"encoding": "pcm16le", "sample_rate_hz": 8000, "channels": 2}}
    junk = [
        lambda: os.urandom(rng.randrange(1, 9)),                                     # a seq64 frame too short for its header
        lambda: (10**9).to_bytes(8, "big") + os.urandom(640),                         # a wild seq jump
        lambda: (5).to_bytes(8, "big") + os.urandom(rng.randrange(1, 4) * 2 + 1),     # half a sample frame
        lambda: "{not json",                                                          # broken JSON
        lambda: json.dumps({"type": "start"}),                                        # start twice
        lambda: (6).to_bytes(8, "big") + os.urandom(70000),                           # a chunk over the limit
    ]
    try:
        async with connect(url, max_size=None) as ws:
            await ws.send(json.dumps(start))
            for seq in range(1, 1 + rng.randrange(5, 40)):
                await ws.send(seq.to_bytes(8, "big") + os.urandom(1280))
            await ws.send(junk[index % len(junk)]())
            while True:
                await asyncio.wait_for(ws.recv(), 20)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


def test_fifty_concurrent_calls_half_of_them_garbage(redis_server, test_models, start_server, subscribe):
    """25 healthy calls and 25 calls that turn to garbage run at once: every healthy call gets its one alert on its agent
    channel and its summary; every garbage call ends with a documented close code, none with an internal error."""
    config = service_config(redis_server.url, test_models["angry"])
    # 25 replays at full speed beside the garbage load this 2-core machine for seconds: a start that waits past the
    # 5 s handshake timeout gets 4408, which is right but not what this test is about.
    config = replace(config, server=replace(config.server, handshake_timeout_s=60.0))
    server = start_server(replace(config, windows=WindowConfig(max_pending_windows=512)))
    sub = subscribe([f"{server.prefix}:agent:h{i}" for i in range(25)])
    results: dict[int, object] = {}

    def healthy(i):
        results[i] = run_call(server.target, str(CALL_WAV), CallPlan(call_id=f"ok-{i}", agent_id=f"h{i}", team="ok",
                                                                     roles=("customer", "agent"), speed=0))

    threads = [threading.Thread(target=healthy, args=(i,)) for i in range(25)]
    for t in threads:
        t.start()
    rng = random.Random(7)

    async def garbage():
        return await asyncio.gather(*(_garbage_call(server.ws_target, rng, i) for i in range(25)))

    codes = asyncio.run(garbage())
    for t in threads:
        t.join(300)
    assert all(code in (1008, 1009) for code in codes), str(codes)
    assert sorted(results) == list(range(25))
    for i, result in results.items():
        assert result.error is None, (i, result.error)
        assert len(result.of("alert")) == 1 and result.of("summary"), i
    published = sub.wait_for(lambda m: True, timeout=10)
    deadline = time.monotonic() + 20
    while len({m[0] for m in sub.messages}) < 25 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {m[0] for m in sub.messages} == {f"{server.prefix}:agent:h{i}" for i in range(25)} and published
    assert _wait(lambda: server.app.calls.active == 0)
