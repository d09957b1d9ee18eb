#!/usr/bin/env bash
# One prepared GPU run of benchmarks/gpu_embed.py (model-only images/s; the embed job end to end with CPU and with
# GPU JPEG decode; GPU and CPU use alongside), from the repository root, offline, in under 8 minutes on an H100/H200.
#   benchmarks/gpu_embed.sh             the GPU machine
#   benchmarks/gpu_embed.sh --dry-run   any machine: the whole script on the CPU, small
# Python: $MMEMBED_PYTHON, else .venv/bin/python, else python3 (the project's venv or wheels installed there).
# The report is also written to $OUT/gpu_embed.log (and $OUT/gpu_embed.json) when $OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${MMEMBED_PYTHON:-}
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
if compgen -G ".whl/*.whl" >/dev/null; then  # wheels carried to a machine without an index (gpu_wheels.sh)
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [[ -n "${OUT:-}" ]]; then
    "$python" benchmarks/gpu_embed.py --json "$@" 2>&1 | tee "$OUT/gpu_embed.log"
    status=${PIPESTATUS[0]}
    sed -n '/^{/,$p' "$OUT/gpu_embed.log" >"$OUT/gpu_embed.json" || true
    exit "$status"
fi
exec "$python" benchmarks/gpu_embed.py "$@"
