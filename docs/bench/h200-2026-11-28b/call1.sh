#!/usr/bin/env bash
# One device call: the service ladders (20 ms and 100 ms chunks, all cores; one worker) with per-process CPU,
# engine batching and py-spy profiles. The ceiling and the naive peer were measured on 2026-11-28 (call 1).
cd "$(dirname "$0")/.."
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PWD/.whl/bin:$PATH LD_LIBRARY_PATH=$PWD/.whl/lib PYTHONUNBUFFERED=1
python3 -m compileall -q -j 16 /tmp/site >/dev/null 2>&1
echo "installed in $(( $(date +%s) - t0 )) s; $(nproc) cores; $(nvidia-smi --query-gpu=name --format=csv,noheader)"
which py-spy redis-server
timeout 470 python3 -m clients.bench_gpu --skip ceiling,naive --budget-s 455 --trial-s 15 \
  --server-log $OUT/server.log --py-spy /tmp/prof --out $OUT/bench_gpu.json
echo "bench exit $?"
tar czf $OUT/profiles.tgz -C /tmp prof 2>/dev/null
ls -la $OUT
echo "total $(( $(date +%s) - t0 )) s"
