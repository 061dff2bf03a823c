"""The transport's own floor: server CPU per call-second of a bare server that only reads 20 ms audio messages.

    python -m clients.bench_transport [--calls 20] [--seconds 20] [--chunk-ms 20]

For each transport (grpcio asyncio on uvloop, grpcio's synchronous thread-per-call server, websockets on
uvloop) a server process runs a handler that reads every message and does nothing else; a client
process sends `--calls` concurrent calls of one 8 kHz stereo PCM16 chunk every `--chunk-ms` each. The
server's CPU time (user + system, /proc) over the run, divided by the seconds of call audio, is what
the transport costs before the service does anything with the audio: the floor under "Per-call CPU cost".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRANSPORTS = ("grpc-aio", "grpc-sync", "websocket")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve(transport: str, port: int) -> None:
    """The bare server (runs in its own process)."""
    if transport == "websocket":
        import uvloop
        from websockets.asyncio.server import serve

        async def handler(ws) -> None:
            async for _ in ws:
                pass

        async def main() -> None:
            async with serve(handler, "127.0.0.1", port, max_queue=32):
                await asyncio.Future()

        uvloop.run(main())
        return
    import grpc

    from agentassist.v1 import agent_assist_pb2 as pb
    from agentassist.v1 import agent_assist_pb2_grpc as pb_grpc

    done = pb.CallEvent(started=pb.SessionStarted(call_id="done"))
    if transport == "grpc-aio":
        import uvloop

        class AioServicer(pb_grpc.AgentAssistServicer):
            async def StreamCall(self, requests, context):
                async for _ in requests:
                    pass
                yield done

        async def main() -> None:
            server = grpc.aio.server()
            pb_grpc.add_AgentAssistServicer_to_server(AioServicer(), server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            await server.wait_for_termination()

        uvloop.run(main())
        return
    from concurrent import futures

    class SyncServicer(pb_grpc.AgentAssistServicer):
        def StreamCall(self, requests, context):
            for _ in requests:
                pass
            yield done

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
    pb_grpc.add_AgentAssistServicer_to_server(SyncServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def _load(transport: str, port: int, calls: int, seconds: float, chunk_ms: int) -> None:
    chunk = bytes(8 * chunk_ms * 4)  # 8 kHz stereo PCM16
    count = int(seconds * 1000 / chunk_ms)

    async def paced():
        began = time.monotonic()
        for k in range(count):
            delay = began + k * chunk_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            yield k

    async def one(index: int) -> None:
        if transport == "websocket":
            from websockets.asyncio.client import connect

            async with connect(f"ws://127.0.0.1:{port}/") as ws:
                async for _ in paced():
                    await ws.send(chunk)
            return
        import grpc

        from agentassist.v1 import agent_assist_pb2 as pb
        from agentassist.v1 import agent_assist_pb2_grpc as pb_grpc

        async def requests():
            async for k in paced():
                yield pb.CallRequest(audio=pb.AudioChunk(seq=k + 1, data=chunk))

        options = [("grpc.use_local_subchannel_pool", 1), ("callpulse.connection", index)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            async for _ in pb_grpc.AgentAssistStub(channel).StreamCall(requests()):
                pass

    await asyncio.gather(*(one(i) for i in range(calls)))


def _wait_listening(port: int, server: subprocess.Popen, timeout: float = 60.0) -> None:
    """Return once the bare server accepts TCP connections; raise if it exited or never listened."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the bare server exited with code {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the bare server did not listen on port {port} within {timeout:.0f} s")


def measure(transport: str, calls: int, seconds: float, chunk_ms: int) -> dict:
    """Server CPU ms per call-second of one transport."""
    from clients.bench import _free_port

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "clients.bench_transport", "--serve", transport, "--port", str(port)], cwd=ROOT)
    try:
        _wait_listening(port, server)
        before = _cpu_s(server.pid)
        began = time.monotonic()
        asyncio.run(_load(transport, port, calls, seconds, chunk_ms))
        wall = time.monotonic() - began
        cpu = _cpu_s(server.pid) - before
    finally:
        server.terminate()
        server.wait(10)
    call_seconds = calls * seconds
    return {"transport": transport, "calls": calls, "chunk_ms": chunk_ms, "cpu_ms_per_call_s": round(cpu * 1000 / call_seconds, 2),
            "server_cores": round(cpu / wall, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.bench_transport", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per call")
    parser.add_argument("--chunk-ms", type=int, default=20, help="audio per message")
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--serve", choices=TRANSPORTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.port)
        return 0
    results = [measure(t, args.calls, args.seconds, args.chunk_ms) for t in args.transports.split(",")]
    for r in results:
        print(f"{r['transport']:10s} {r['calls']} calls, {r['chunk_ms']} ms chunks: {r['cpu_ms_per_call_s']} ms CPU per call-second "
              f"({r['server_cores']} cores)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
