"""LeNet-5 forward pass: dnnc compile time, and inference time at batch 64 next to numpy.

numpy here is a competent vectorized implementation (im2col through sliding windows, then
one matrix product per layer on OpenBLAS), run alternately with dnnc in the same process.
Usage: python benchmarks/lenet5_forward.py [--batch 64] [--repeat 50]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import dnnc

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lenet5.net"


def numpy_forward(p, x):
    def conv(x, w, b, pad):
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        k = w.shape[2]
        win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))  # n c i j r s
        n, c, i, j = win.shape[:4]
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * i * j, c * k * k)
        y = cols @ w.reshape(w.shape[0], -1).T + b
        return y.reshape(n, i, j, -1).transpose(0, 3, 1, 2)

    def pool(x):
        n, c, h, w = x.shape
        return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))

    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    h = pool(relu(conv(x, p["c1.weight"], p["c1.bias"], 2)))
    h = pool(relu(conv(h, p["c2.weight"], p["c2.bias"], 0)))
    h = h.reshape(h.shape[0], -1)
    h = relu(h @ p["f3.weight"].T + p["f3.bias"])
    h = relu(h @ p["f4.weight"].T + p["f4.bias"])
    return h @ p["logits.weight"].T + p["logits.bias"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=50)
    a = ap.parse_args()
    t0 = time.perf_counter()
    net = dnnc.load(EXAMPLE)
    model = net.compile(batch=a.batch)
    compile_s = time.perf_counter() - t0
    x = np.random.default_rng(0).random((a.batch, 1, 28, 28), dtype=np.float32)
    params = {k: v.copy() for k, v in model.params.items()}
    model.buffers["image"][...] = x
    ref = numpy_forward(params, x)
    model.run_batch()
    np.testing.assert_allclose(model.buffers["logits"], ref, rtol=1e-4, atol=1e-4)
    td, tn = [], []
    for _ in range(a.repeat):  # alternate, so both see the same machine noise
        t = time.perf_counter()
        model.run_batch()
        td.append(time.perf_counter() - t)
        t = time.perf_counter()
        numpy_forward(params, x)
        tn.append(time.perf_counter() - t)
    md, mn = statistics.median(td), statistics.median(tn)
    print(f"LeNet-5 forward, batch {a.batch}, median of {a.repeat}")
    print(f"  dnnc compile (parse..JIT, cold): {compile_s * 1e3:.0f} ms "
          f"(front end {model.compile_seconds['front'] * 1e3:.0f} ms, LLVM {model.compile_seconds['llvm'] * 1e3:.0f} ms)")
    print(f"  dnnc  : {md * 1e3:8.3f} ms  {a.batch / md:10.0f} images/s")
    print(f"  numpy : {mn * 1e3:8.3f} ms  {a.batch / mn:10.0f} images/s")
    print(f"  dnnc / numpy speed: {mn / md:.2f}x")


if __name__ == "__main__":
    main()
