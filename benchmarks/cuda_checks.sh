#!/usr/bin/env bash
# The GPU target on a machine with an NVIDIA GPU: its tests (GPU ones included), LeNet-5
# trained on the embedded digits and evaluated on the CPU, training steps against PyTorch
# eager on the same GPU, the slowest kernels of ResNet-18's step, and a 4096^3 product
# against cuBLAS. Logs go under $OUT (default /tmp/dnnc-cuda).
# Usage, from the repository root: bash benchmarks/cuda_checks.sh
set -u
OUT=${OUT:-/tmp/dnnc-cuda}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 300 python -m pytest -q -rfs tests/test_gpu.py 2>&1 | tail -60 > "$OUT/tests.log"
{ /usr/bin/time -f "wall %e s" python -m dnnc.cli train examples/lenet5.net --target cuda --out "$OUT/lenet5.npz"
  python -m dnnc.cli eval examples/lenet5.net --weights "$OUT/lenet5.npz"; } 2>&1 | grep -v "^ " > "$OUT/train.log"
for spec in "lenet5 64" "lenet5 1024" "resnet18 64" "vgg16 32"; do
  timeout 240 python benchmarks/zoo_training.py --target cuda --net "${spec% *}" --batch "${spec#* }" --repeat 5
done > "$OUT/bench.log" 2>&1
timeout 120 python benchmarks/cuda_matmul.py >> "$OUT/bench.log" 2>&1
for spec in "lenet5 64" "resnet18 64"; do
  timeout 240 python -m dnnc.cli bench "examples/${spec% *}.net" --target cuda --batch "${spec#* }" --training \
    --per-layer --repeat 5 > "$OUT/layers_${spec% *}.txt" 2>&1
  { echo "== ${spec}"; tail -3 "$OUT/layers_${spec% *}.txt"; grep -E "^\S+\s+[0-9.]+ (ms|us|µs|s)" "$OUT/layers_${spec% *}.txt" \
    | sort -t% -k1 | awk '{print $(NF), $0}' | sort -rn | head -25 | cut -d' ' -f2-; } >> "$OUT/bench.log"
done
cat "$OUT/tests.log" "$OUT/train.log" "$OUT/bench.log"
