#!/usr/bin/env bash
# The GPU target on a machine with an NVIDIA GPU: its tests (GPU ones included), LeNet-5
# trained on the embedded digits and evaluated on the CPU, and training steps against
# PyTorch eager on the same GPU. Logs go under $OUT (default /tmp/dnnc-cuda).
# Usage, from the repository root: bash benchmarks/cuda_checks.sh
set -u
OUT=${OUT:-/tmp/dnnc-cuda}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 300 python -m pytest -q -rs tests/test_gpu.py 2>&1 | tee "$OUT/tests.log"
{ /usr/bin/time -f "wall %e s" python -m dnnc.cli train examples/lenet5.net --target cuda --out "$OUT/lenet5.npz"
  python -m dnnc.cli eval examples/lenet5.net --weights "$OUT/lenet5.npz"; } 2>&1 | tee "$OUT/train.log"
for spec in "lenet5 64" "lenet5 1024" "resnet18 64" "vgg16 32"; do
  timeout 240 python benchmarks/zoo_training.py --target cuda --net "${spec% *}" --batch "${spec#* }" --repeat 5
done 2>&1 | tee "$OUT/bench.log"
