#!/usr/bin/env bash
# What ran on the H200 on 2026-11-28 (three device calls), after, here:
#   make proto && ../shared/tools/device-wheels.sh pyzmq==27.3.0 msgspec==0.22.0
# with .whl and agentassist carried. Each call began with:
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PWD/.whl/bin:$PATH LD_LIBRARY_PATH=$PWD/.whl/lib PYTHONUNBUFFERED=1
python3 -m compileall -q -j 16 /tmp/site  # calls 2 and 3

# call 1 (commit 6f30b4a + the bench's processes-per-call fix): gpu_tests.log, bench_gpu.json (its ladder failed: the
# engine was killed for a missed heartbeat while 12 workers started beside it)
timeout 130 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
timeout 370 python3 -m clients.bench_gpu --budget-s 335 --trial-s 15 --workers 12 --loadgen-processes 6 --out $OUT/bench_gpu.json

# call 2 (start timeout instead of the heartbeat before ready, workers still started with the engine):
# ladder_workers12_before_fix.json (not ready in 180 s), ladder_workers1.json
timeout 330 python3 -m clients.bench_gpu --skip ceiling,naive --budget-s 310 --trial-s 15 --workers 12 --loadgen-processes 6 --out $OUT/ladder_all.json
timeout 170 python3 -m clients.bench_gpu --skip ceiling,naive --budget-s 155 --trial-s 15 --workers 1 --loadgen-processes 2 --ladder 50,100,150,200 --out $OUT/ladder_one.json

# call 3 (commit 4762280's supervisor: workers start once the engine is ready): ladder_workers12.json
timeout 265 python3 -m clients.bench_gpu --skip ceiling,naive --budget-s 245 --trial-s 15 --workers 12 --loadgen-processes 6 \
  --server-env CALLPULSE_LOG_LEVEL=INFO --server-log $OUT/server.log --out $OUT/ladder_all.json
