"""Raw gRPC helpers for tests: send hand-made request sequences and collect events or the error status."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from agentassist.v1 import agent_assist_pb2 as pb
from agentassist.v1 import agent_assist_pb2_grpc as pb_grpc


def config_msg(call_id="bad", encoding=pb.AUDIO_ENCODING_PCM16LE, rate=8000, channels=1, roles=None, **extra):
    roles = [pb.ROLE_CUSTOMER] if roles is None else roles
    return pb.CallRequest(config=pb.CallConfig(
        call_id=call_id, agent_id=extra.get("agent_id", "a-bad"), team=extra.get("team", "t-bad"),
        audio=pb.AudioFormat(encoding=encoding, sample_rate_hz=rate, channels=channels, channel_roles=roles),
    ))


def audio_msg(seq: int, nbytes: int = 320) -> pb.CallRequest:
    return pb.CallRequest(audio=pb.AudioChunk(seq=seq, data=np.zeros(nbytes, np.uint8).tobytes()))


END = pb.CallRequest(end=pb.EndOfCall(reason="done"))


async def raw_call(target: str, requests: list[pb.CallRequest], hold_open: float = 2.0):
    """Send `requests`, keep the request stream open up to `hold_open` s, return (events, (code, details) | None)."""
    address = target.removeprefix("grpc://")

    async def gen():
        for request in requests:
            yield request
        await asyncio.sleep(hold_open)

    events = []
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.AgentAssistStub(channel).StreamCall(gen())
        try:
            async for event in call:
                events.append(event)
        except grpc.aio.AioRpcError as exc:
            return events, (exc.code(), exc.details())
    return events, None
