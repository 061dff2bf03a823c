"""The engine's own cost per window: an EngineServer with the constant model and one worker's client in one process.

    python -m clients.bench_engine [--windows 20000] [--in-flight 64] [--repeats 3]

The client keeps `--in-flight` 1 s windows in flight over the engine's ZeroMQ link until `--windows` were answered;
reported: windows answered per second and the process's CPU per window (engine and client together: what the
IPC, the batcher and the engine's event loop cost, with a model that costs almost nothing). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time

import numpy as np
import zmq.asyncio

from service.engine import EngineServer
from service.inference.batcher import InferenceBatcher
from service.inference.constant import ConstantEmotionModel
from service.inference.remote import RemoteScoringClient
from service.inference.scoring import LocalScoringClient


async def measure(windows: int, in_flight: int) -> dict:
    """One run: windows per second and CPU microseconds per window."""
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = f"ipc://{tmp}/engine.sock"
        model = ConstantEmotionModel()
        context = zmq.asyncio.Context()
        server = EngineServer(endpoint)
        server.bind(context)
        batcher = InferenceBatcher(model, max_batch=32, max_wait_ms=2)
        batcher.start()
        server.serve_model(LocalScoringClient(model, batcher))
        serving = asyncio.create_task(server.run())
        client = RemoteScoringClient(endpoint, worker=0)
        await client.start()
        try:
            await client.wait_ready(10)
            audio = np.zeros(16000, np.float32)
            gate = asyncio.Semaphore(in_flight)

            async def one() -> None:
                async with gate:
                    await asyncio.wrap_future(client.submit(audio))

            await asyncio.gather(*(one() for _ in range(min(500, windows))))  # warm
            began, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(one() for _ in range(windows)))
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        finally:
            await client.close()
            serving.cancel()
            try:
                await serving
            except asyncio.CancelledError:
                pass
            server.close()
            batcher.stop()
            context.term()
    return {"windows_per_s": round(windows / wall), "cpu_us_per_window": round(cpu / windows * 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.bench_engine", description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for _ in range(args.repeats):
        print(json.dumps(asyncio.run(measure(args.windows, args.in_flight))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
