#!/usr/bin/env bash
# Device call 3: 1500 and 2000 calls in 100 ms chunks, with the load generator's ramp fix.
cd "$(dirname "$0")/.."
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PWD/.whl/bin:$PATH LD_LIBRARY_PATH=$PWD/.whl/lib PYTHONUNBUFFERED=1
python3 -m compileall -q -j 16 /tmp/site >/dev/null 2>&1
echo "installed in $(( $(date +%s) - t0 )) s"
timeout 160 python3 -m clients.bench_gpu --skip ceiling,naive,ladder,ladder_one --ladder 1500,2000 --workers 12 \
  --loadgen-processes 4 --budget-s 150 --trial-s 15 --out $OUT/big_chunks_1500.json
echo "exit $? at $(( $(date +%s) - t0 )) s"
