#!/usr/bin/env bash
# The checks and benchmarks run on a lent GPU machine (one script, one call). Writes logs to $OUT (or ./gpu_out).
# Uses the machine's own torch; snapfit is imported from the working tree. The default steps' limits add up to
# 420 s, inside one 600 s device call; FULL=1 adds that machine's CPU figures and the whole suite (another 480 s).
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1
FAILED=()
step() {
  local name=$1 limit=$2 rc; shift 2; echo "== $name"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; rc=$?
  echo "rc=$rc" >> "$OUT/$name.txt"; tail -n 15 "$OUT/$name.txt"
  if [ "$rc" -ne 0 ]; then FAILED+=("$name (rc=$rc)"); fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1; cat "$OUT/gpu.txt"
python3 -c "import torch, torchvision, sys; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
step cuda_tests 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_scale.py tests/test_writer.py tests/test_course_learners.py -rs
step overhead_cuda 150 python3 benchmarks/overhead.py --reps 5 --epochs 2
step lars_overhead_cuda 60 python3 benchmarks/lars_overhead.py --reps 5 --batches 20 --bs 64
step lars_overhead_cuda_big 90 python3 benchmarks/lars_overhead.py --reps 5 --batches 10 --bs 256 --sz 96
if [ "${FULL:-0}" = 1 ]; then
  step overhead_cpu_A 90 python3 benchmarks/overhead.py --device cpu --threads 1 --workload A --reps 15 --epochs 2
  step overhead_cpu_B 150 python3 benchmarks/overhead.py --device cpu --threads 1 --workload B --reps 3 --epochs 1
  step suite 240 python3 -m pytest -q -p no:cacheprovider --ignore=tests/test_notebooks.py -x
fi

echo "== summary"
for f in "$OUT"/*.txt; do grep -H -E "ratio|median|passed|failed" "$f" | tail -n 3; done
if [ ${#FAILED[@]} -ne 0 ]; then echo "FAILED steps: ${FAILED[*]}"; exit 1; fi
echo "all steps passed"
