"""What a pod's processes share: calls counted across workers (max_calls, the per-worker bound), the pod's memory, and
which processes are missing."""

import multiprocessing

import pytest

from service.calls import CallRegistry
from service.config import ServerConfig
from service.domain import AudioFormat, CallConfig, Encoding, Role
from service.errors import CapacityExceeded
from service.pod import PodSlot, PodState


class _Session:
    def __init__(self, config):
        self.config = config
        self.finishing = None


def _registry(state, worker, max_calls=3, per_worker=2, max_rss_mb=0):
    registry = CallRegistry(max_calls, _Session, max_rss_mb=max_rss_mb, pod=PodSlot(state, worker, max_calls, per_worker))
    registry.accepting = True
    return registry


def _call(call_id):
    return CallConfig(call_id, "a", "t", "", AudioFormat(Encoding.PCM16LE, 8000, (Role.CUSTOMER,)))


def test_calls_are_counted_across_the_workers_of_a_pod():
    """Two workers' registries share one count: the per-worker bound refuses a worker's third call naming
    max_calls_per_worker, max_calls refuses the pod's fourth call on the other worker, and a released call frees room."""
    state = PodState(multiprocessing.get_context("spawn"), workers=2)
    first, second = _registry(state, 0), _registry(state, 1)
    sessions = [first.open(_call("a")), first.open(_call("b"))]
    with pytest.raises(CapacityExceeded, match="max_calls_per_worker"):
        first.open(_call("c"))
    sessions.append(second.open(_call("d")))
    with pytest.raises(CapacityExceeded, match="limit of 3 concurrent calls"):
        second.open(_call("e"))
    assert state.calls() == [2, 1]
    first.release(sessions[0], "completed")
    second.open(_call("e"))
    assert state.calls() == [1, 2]
    state.forget_worker(0)  # the worker died: its calls are gone
    assert state.calls() == [0, 2]


def test_the_pods_memory_bound_refuses_new_calls_on_every_worker():
    """With the pod's resident memory (as the supervisor measured it) over max_rss_mb, a new call on any worker is refused
    and nothing is counted."""
    state = PodState(multiprocessing.get_context("spawn"), workers=2)
    registry = _registry(state, 1, max_rss_mb=1000)
    state.rss_mb = 1500
    with pytest.raises(CapacityExceeded, match="1500 MB, over its limit of 1000 MB"):
        registry.open(_call("x"))
    assert state.calls() == [0, 0]
    state.rss_mb = 500
    registry.open(_call("x"))
    assert state.calls() == [0, 1]


def test_readiness_names_the_missing_workers():
    """The pod describes which workers are not ready, and nothing once all are."""
    state = PodState(multiprocessing.get_context("spawn"), workers=3)
    for index in (1, 3):
        state.set_ready(index, True)
    assert state.describe() == "worker 2 of 3 restarting"
    state.set_ready(2, True)
    assert state.describe() is None


def test_worker_count_and_per_worker_bound_resolve_their_defaults():
    """workers 0 means one per core less one (at least one); max_calls_per_worker 0 means twice a worker's share."""
    assert ServerConfig().worker_count(16) == 15 and ServerConfig().worker_count(1) == 1
    assert ServerConfig(workers=3).worker_count(16) == 3
    assert ServerConfig(max_calls=500).calls_per_worker(15) == 67
    assert ServerConfig(max_calls=500, max_calls_per_worker=40).calls_per_worker(15) == 40
