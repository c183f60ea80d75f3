#!/usr/bin/env bash
# The GPU check (issue: the papers' models on a GPU). Run where a CUDA GPU is, from a clone whose .venv
# `make venv` built (no network needed after that):
#
#     scripts/gpu_check.sh [OUT.json]
#
# 1. tests/test_gpu.py (the tiny models' captures, interventions and generation on CUDA, float32 and bfloat16);
# 2. the QUICK book and the default book with the bundled model, executed on the GPU (no rendering), each
#    timed from scratch (--force).
# Writes the GPU's name and each step's seconds and exit status to OUT.json (default _build/gpu-times.json).
# No test depends on this script; README.md reports its times where a GPU machine has run it.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-_build/gpu-times.json}
mkdir -p "$(dirname "$out")"
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
gpu=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)
if [ -z "$gpu" ]; then
  echo "scripts/gpu_check.sh: no CUDA GPU visible (nvidia-smi found none); run it on a GPU machine" >&2
  exit 2
fi
steps=()
run() {  # run NAME COMMAND...: time one step, keep going when it fails
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@"; local rc=$?
  steps+=("$name $(python3 -c "import sys; print(round($(date +%s.%N) - $t0, 1))") $rc")
}
run test_gpu .venv/bin/python -m pytest -q tests/test_gpu.py
run book_quick .venv/bin/emocircuits book --quick --force --no-render --jobs 1
run book_default .venv/bin/emocircuits book --force --no-render --jobs 1
python3 - "$out" "$gpu" "${steps[@]}" <<'PY'
import json, os, sys, tempfile
out, gpu, steps = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = {name: {"seconds": float(s), "exit": int(rc)} for name, s, rc in (x.split() for x in steps)}
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)))
with os.fdopen(fd, "w") as fh:
    json.dump({"gpu": gpu, "steps": rows}, fh, indent=1)
os.replace(tmp, out)
print(json.dumps(rows, indent=1))
PY
