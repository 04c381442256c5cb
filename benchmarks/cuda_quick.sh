#!/usr/bin/env bash
# A short run of the GPU target (about two minutes): LeNet-5 and ResNet-18 training steps and
# a 4096^3 product against PyTorch on the same GPU, then LeNet-5 trained on the embedded
# digits and evaluated on the CPU, then the GPU tests of the small networks (as time allows:
# TEST_SECONDS, default 100). Logs go under $OUT.
set -u
OUT=${OUT:-/tmp/dnnc-cuda}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
for spec in "lenet5 64" "resnet18 64"; do
  timeout 100 python benchmarks/zoo_training.py --target cuda --net "${spec% *}" --batch "${spec#* }" --repeat 5
done 2>&1 | tee "$OUT/bench.log"
timeout 60 python benchmarks/cuda_matmul.py 2>&1 | tee -a "$OUT/bench.log"
{ /usr/bin/time -f "wall %e s" python -m dnnc.cli train examples/lenet5.net --target cuda --out "$OUT/lenet5.npz"
  python -m dnnc.cli eval examples/lenet5.net --weights "$OUT/lenet5.npz"; } 2>&1 | grep -v "^ " | tail -4 | tee "$OUT/train.log"
timeout "${1:-100}" python -m pytest -v -rfs -p no:cacheprovider tests/test_gpu.py -k "lenet5 or resnet20 or checked" \
  > "$OUT/tests.log" 2>&1
grep -E "PASSED|FAILED|Error|passed|failed" "$OUT/tests.log" | grep -v "test_ptx\|test_bound" | tail -20
