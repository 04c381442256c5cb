#!/usr/bin/env bash
# The GPU target on a machine with an NVIDIA GPU. Logs go under $OUT (default /tmp/dnnc-cuda).
#   bench: training steps and inference of LeNet-5, ResNet-18 and VGG-16 against PyTorch eager
#          on the same GPU in fp32, TF32 and bf16; 4096^3 products against cuBLAS in each;
#          ResNet-18's slowest kernels; LeNet-5 trained on the embedded digits in each precision
#          (and the fp32 weights evaluated on the CPU)
#   tests: the GPU tests (zoo networks against the CPU, tensor-core precision, checked kernels)
#   all:   both, then the whole GPU test file with DNNC_GPU_ZOO=full
# Usage, from the repository root: bash benchmarks/cuda_checks.sh [bench|tests|all]
set -u
OUT=${OUT:-/tmp/dnnc-cuda}
WHAT=${1:-all}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ "$WHAT" != bench ]; then
  timeout 330 python -m pytest -q -rf -p no:cacheprovider tests/test_gpu.py \
    -k "equal_the_cpu or precision or checked" > "$OUT/gputests.log" 2>&1
  tail -12 "$OUT/gputests.log"
fi
if [ "$WHAT" != tests ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  bench() { timeout 120 python benchmarks/zoo_training.py --target cuda --repeat 5 "$@"; }
  { bench --net lenet5 --batch 64
    for p in fp32 tf32 bf16; do
      bench --net resnet18 --batch 64 --precision $p
      bench --net resnet18 --batch 64 --precision $p --inference
      bench --net vgg16 --batch 32 --precision $p
    done
    timeout 120 python benchmarks/cuda_matmul.py
  } > "$OUT/bench.log" 2>&1
  timeout 120 python -m dnnc.cli bench examples/resnet18.net --target cuda --batch 64 --training --per-layer \
    --repeat 5 > "$OUT/layers_resnet18.txt" 2>&1
  { tail -3 "$OUT/layers_resnet18.txt"; grep -E "%$" "$OUT/layers_resnet18.txt" | awk '{print $(NF), $0}' \
    | sort -rn | head -12 | cut -d' ' -f2-; } >> "$OUT/bench.log"
  for p in fp32 tf32 bf16; do
    /usr/bin/time -f "wall %e s" python -m dnnc.cli train examples/lenet5.net --target cuda --precision $p \
      --out "$OUT/lenet5_$p.npz" 2>&1 | grep -v "^ " | tail -2 | sed "s/^/$p: /"
  done > "$OUT/train.log" 2>&1
  for p in fp32 tf32 bf16; do
    python -m dnnc.cli eval examples/lenet5.net --weights "$OUT/lenet5_$p.npz" 2>&1 | grep accuracy | sed "s/^/$p on the cpu: /"
  done >> "$OUT/train.log"
  grep -v "^ *$" "$OUT/bench.log" "$OUT/train.log" | cut -d: -f2- | tail -50
fi
if [ "$WHAT" = all ]; then
  DNNC_GPU_ZOO=full timeout 900 python -m pytest -v -rfs -p no:cacheprovider tests/test_gpu.py > "$OUT/tests.log" 2>&1
  grep -E "FAILED|Error|passed|failed" "$OUT/tests.log" | tail -20
fi
