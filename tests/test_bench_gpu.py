"""`python -m clients.bench_gpu --smoke` writes the GPU benchmark's JSON (ceiling, naive peer, ladder) on the CPU,
and a ladder whose server cannot start is recorded instead of failing the run."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(420)
def test_smoke_run_writes_every_part_of_the_json(tmp_path):
    """The smoke run exits 0 and its JSON has the ceiling (eager and graph per precision, chunk and batch), the
    capture report, the naive peer, the speech check's cost per batch size, and the ladders' steps (20 and 100 ms chunks, one worker) with GPU, server CPU per
    process and engine batching fields."""
    out = tmp_path / "bench_gpu.json"
    profiles = tmp_path / "profiles"
    run = subprocess.run([sys.executable, "-m", "clients.bench_gpu", "--smoke", "--out", str(out), "--py-spy", str(profiles)],
                         cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["schema"] == "callpulse-bench-gpu/1" and result["smoke"] is True and result["complete"] is True
    assert result["machine"]["device"] == "cpu" and "SMOKE" in result["note"]

    ceiling = result["ceiling"]
    assert ceiling["errors"] == [] and ceiling["graph_backend"] == "emulated"
    settings = result["settings"]
    expected = {(p, c, b) for p in settings["precisions"] for c in settings["chunks_s"] for b in settings["batches"]}
    assert {(r["precision"], r["chunk_s"], r["batch"]) for r in ceiling["rows"]} == expected
    for row in ceiling["rows"]:
        assert row["eager_ms"] > 0 and row["graph_ms"] > 0 and row["eager_audio_s_per_s"] > 0
        assert row["graph_replayed"] is True and row["max_abs_diff_graph_vs_eager"] <= 1e-5
    assert [c["self_check"] for c in ceiling["captures"]] == ["passed"] * len(settings["precisions"])
    assert {(b["precision"], b["chunk_s"]) for b in ceiling["best"]} == {(p, c) for p in settings["precisions"] for c in settings["chunks_s"]}

    naive = result["naive"]
    assert naive["ms_per_window"] > 0 and naive["realtime_calls"] > 0 and naive["device"] == "cpu"

    check = result["speech_check"]
    assert check["device"] == "cpu" and check["split"] is True
    assert [r["batch"] for r in check["rows"]] == settings["speech_batches"]
    assert all(r["ms_per_batch"] > 0 and r["windows_per_s"] > 0 and r["new_chunks_per_window"] == 15 for r in check["rows"])

    ladder = result["ladder"]
    assert ladder["error"] is None and ladder["steps_planned"] == settings["ladder"]
    assert ladder["steps"] and ladder["max_passing_calls"] is not None
    for i, step in enumerate(ladder["steps"]):
        assert step["calls"] == settings["ladder"][i]
        assert {"pass", "p99_ms", "drop_ratio", "server_cpu_cores_process_tree", "gpu", "loadgen"} <= set(step)
        assert step["gpu"]["error"] == "no GPU (CPU run)"
        assert step["pass"] or i == len(ladder["steps"]) - 1  # the ladder stops at its first failure
        by_process = step["server_cores_by_process"]
        assert by_process["engine"] >= 0 and by_process["supervisor"] >= 0  # an engine of 1-2 calls may round to 0.0
        assert len(by_process["workers"]) >= 1 and by_process["workers"][0] > 0
        assert step["engine"]["batches"] >= 1 and step["engine"]["mean_batch"] >= 1
        assert step["loadgen"]["chunk_ms"] == 20
        # py-spy (a device wheel, not a dependency) samples the pod where it is installed; elsewhere the step says why not
        profile = step["profile"]
        assert (profiles / profile["file"]).stat().st_size > 0 if "file" in profile else profile["error"] == "py-spy is not on PATH"
    big = result["ladder_big_chunks"]
    assert big["error"] is None and big["chunk_ms"] == 100 and big["steps"] and big["steps_planned"] == settings["ladder_big"]
    assert big["steps"][0]["loadgen"]["chunk_ms"] == 100 and big["steps"][0]["loadgen"]["updates"] > 0
    one = result["ladder_one_worker"]
    assert one["error"] is None and one["workers"] == 1 and one["steps_planned"] == settings["ladder_one"]
    assert one["steps"] and one["steps"][0]["calls"] == settings["ladder_one"][0]


def test_the_load_takes_a_third_of_the_cores_and_the_workers_the_rest_less_the_engine():
    """On a GPU machine the ladder's load generator and server share the cores: 5 load processes and 10 workers on 16
    cores (4 and 12 for 100 ms chunks, whose load costs less), never fewer than one of each."""
    from clients.bench_gpu import load_defaults

    assert load_defaults(16) == (5, 10)
    assert load_defaults(2) == (1, 1) and load_defaults(1) == (1, 1)
    assert load_defaults(16, chunk_ms=100) == (4, 12) and load_defaults(2, chunk_ms=100) == (1, 1)


def test_a_ladder_whose_server_cannot_start_records_the_error(tmp_path):
    """If the served process exits during start-up, the ladder records why (its stderr) and returns."""
    from clients.bench_gpu import SMOKE, Budget, run_ladder

    result = run_ladder(str(tmp_path / "no-model-here"), "cpu", dict(SMOKE), Budget(120), None, {}, None)
    assert result["steps"] == [] and "did not become ready (exited" in result["error"] and "make model" in result["error"]
