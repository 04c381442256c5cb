"""A 4096 x 4096 x 4096 matrix product on the GPU: dnnc's dense layer against cuBLAS.

dnnc computes `dense(x, 4096)` at batch 4096 (y = x W^T + b, the product plus a bias) with
its default GPU schedule; PyTorch's torch.addmm on the same GPU in fp32 (TF32 off) and TF32.
Each timed run is awaited; medians.

Usage: python benchmarks/cuda_matmul.py [--size 4096] [--repeat 10]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import dnnc


def median(fn, repeat: int) -> float:
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args(argv)
    n = args.size
    import torch

    net = dnnc.load(f"network mm {{\n input x: [{n}]\n y = dense(x, {n})\n output y\n}}")
    t0 = time.perf_counter()
    model = net.compile(batch=n, target="cuda")
    compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n)).astype(np.float32)
    model.buffers["x"][...] = x
    ex = model.executable("forward")
    ours = median(ex.run, args.repeat)
    w = torch.from_numpy(np.ascontiguousarray(model.params["y.weight"])).cuda()
    b = torch.from_numpy(np.ascontiguousarray(model.params["y.bias"])).cuda()
    xt = torch.from_numpy(x).cuda()
    got = model.buffers["y"]
    want = torch.addmm(b, xt, w.t()).cpu().numpy()
    err = float(np.abs(got - want).max() / np.abs(want).max())

    def peer():
        torch.addmm(b, xt, w.t())
        torch.cuda.synchronize()

    flops = 2 * n ** 3
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        theirs = median(peer, args.repeat)
        name = "cuBLAS TF32" if tf32 else "cuBLAS fp32"
        print(f"{n}^3 product: dnnc {ours * 1e3:.2f} ms ({flops / ours / 1e12:.1f} TFLOP/s), {name} "
              f"{theirs * 1e3:.2f} ms ({flops / theirs / 1e12:.1f} TFLOP/s), ratio {theirs / ours:.2f}x")
    print(f"max error relative to the largest output {err:.1e}; dnnc compile {compile_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
