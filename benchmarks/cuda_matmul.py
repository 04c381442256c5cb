"""A 4096 x 4096 x 4096 matrix product on the GPU: dnnc's dense layer against cuBLAS.

dnnc computes `dense(x, 4096)` at batch 4096 (y = x W^T + b, the product plus a bias) with
its default GPU schedule in each precision (fp32 on the CUDA cores; tf32 and bf16 operands
on the tensor cores, fp32 sums); PyTorch's torch.addmm on the same GPU in the same precision
(fp32 with TF32 off, TF32, bf16 operands). Each timed run is awaited; medians.

Usage: python benchmarks/cuda_matmul.py [--size 4096] [--repeat 10] [--precision fp32 tf32 bf16]
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
    ap.add_argument("--precision", nargs="+", default=["fp32", "tf32", "bf16"], choices=["fp32", "tf32", "bf16"])
    args = ap.parse_args(argv)
    n = args.size
    import torch

    net = dnnc.load(f"network mm {{\n input x: [{n}]\n y = dense(x, {n})\n output y\n}}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n)).astype(np.float32)
    flops = 2 * n ** 3
    for precision in args.precision:
        t0 = time.perf_counter()
        model = net.compile(batch=n, target="cuda", precision=precision)
        compile_s = time.perf_counter() - t0
        model.buffers["x"][...] = x
        ex = model.executable("forward")
        ours = median(ex.run, args.repeat)
        w = torch.from_numpy(np.ascontiguousarray(model.params["y.weight"])).cuda()
        b = torch.from_numpy(np.ascontiguousarray(model.params["y.bias"])).cuda()
        xt = torch.from_numpy(x).cuda()
        got = model.buffers["y"]
        torch.backends.cuda.matmul.allow_tf32 = False
        exact = torch.addmm(b.double(), xt.double(), w.t().double()).cpu().numpy()
        err = float(np.abs(got - exact).max() / np.abs(exact).max())
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        xp, wp, bp = (v.bfloat16() for v in (xt, w, b)) if precision == "bf16" else (xt, w, b)

        def peer():
            torch.addmm(bp, xp, wp.t())
            torch.cuda.synchronize()

        theirs = median(peer, args.repeat)
        peer_err = float(np.abs(torch.addmm(bp, xp, wp.t()).float().cpu().numpy() - exact).max() / np.abs(exact).max())
        print(f"{n}^3 product {precision}: dnnc {ours * 1e3:.2f} ms ({flops / ours / 1e12:.1f} TFLOP/s), cuBLAS "
              f"{theirs * 1e3:.2f} ms ({flops / theirs / 1e12:.1f} TFLOP/s), ratio {theirs / ours:.2f}x; "
              f"error off float64 {err:.1e} (cuBLAS {peer_err:.1e}); dnnc compile {compile_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
