#!/usr/bin/env bash
# The GPU target on a machine with an NVIDIA GPU: training steps against PyTorch eager on the
# same GPU, a 4096^3 product against cuBLAS, the slowest kernels of ResNet-18's step, LeNet-5
# trained on the embedded digits (and evaluated on the CPU), then the tests, GPU ones
# included. Logs go under $OUT (default /tmp/dnnc-cuda).
# Usage, from the repository root: bash benchmarks/cuda_checks.sh [TEST_SECONDS]
set -u
OUT=${OUT:-/tmp/dnnc-cuda}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
for spec in "lenet5 64" "lenet5 1024" "resnet18 64" "vgg16 32"; do
  timeout 240 python benchmarks/zoo_training.py --target cuda --net "${spec% *}" --batch "${spec#* }" --repeat 5
done > "$OUT/bench.log" 2>&1
timeout 120 python benchmarks/cuda_matmul.py >> "$OUT/bench.log" 2>&1
timeout 240 python -m dnnc.cli bench examples/resnet18.net --target cuda --batch 64 --training --per-layer \
  --repeat 5 > "$OUT/layers_resnet18.txt" 2>&1
{ tail -3 "$OUT/layers_resnet18.txt"; grep -E "%$" "$OUT/layers_resnet18.txt" | awk '{print $(NF), $0}' | sort -rn \
  | head -15 | cut -d' ' -f2-; } >> "$OUT/bench.log"
{ /usr/bin/time -f "wall %e s" python -m dnnc.cli train examples/lenet5.net --target cuda --out "$OUT/lenet5.npz"
  python -m dnnc.cli eval examples/lenet5.net --weights "$OUT/lenet5.npz"; } 2>&1 | grep -v "^ " > "$OUT/train.log"
cat "$OUT/bench.log" "$OUT/train.log"
DNNC_GPU_ZOO=full timeout "${1:-600}" python -m pytest -v -rfs -p no:cacheprovider tests/test_gpu.py > "$OUT/tests.log" 2>&1
grep -E "PASSED|FAILED|SKIPPED|Error|passed|failed" "$OUT/tests.log" | grep -v "^tests/test_gpu.py::test_ptx" | tail -40
