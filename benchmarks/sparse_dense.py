"""Sparse (ELL) against dense inference of a pruned dense layer, across densities.

One dense layer (784 -> 300, the first of LeNet-300-100, and 4096 -> 4096) pruned by magnitude
to each density; both compiled programs run on the same weights, alternating, medians. The
density where sparse stops winning is the threshold `dnnc run`/`eval` use to choose.

Usage: python benchmarks/sparse_dense.py [--batch 1] [--repeat 50]
"""
from __future__ import annotations

import argparse

import numpy as np

import dnnc
from dnnc.compression.compress import prune_mask
from dnnc.te.sparse import rows_needed
from targets import median_pair  # benchmarks/ is on sys.path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    for k, u in ((784, 300), (4096, 4096)):
        net = dnnc.load(f"network d {{ input x: [{k}]\n y = dense(x, {u})\n output y }}")
        dense = net.compile(batch=args.batch, threads=1)
        x = np.random.default_rng(0).random((args.batch, k), dtype=np.float32)
        dense.buffers["x"][...] = x
        full = dense.params["y.weight"].copy()
        print(f"dense {k} -> {u}, batch {args.batch}, one thread: density, dense, sparse (ELL), dense/sparse")
        for density in (0.02, 0.05, 0.08, 0.12, 0.2, 0.3, 0.5):
            w = full * prune_mask(full, density)
            dense.params["y.weight"] = w
            sparse = net.compile(batch=args.batch, threads=1, sparse={"y.weight": rows_needed(w)})
            sparse.params.update_from(dense.params)
            sparse.fill_sparse()
            sparse.buffers["x"][...] = x
            td, ts = median_pair(dense.run_batch, sparse.run_batch, args.repeat)
            np.testing.assert_allclose(sparse.buffers["y"], dense.buffers["y"], rtol=1e-4, atol=1e-4)
            print(f"  {density:5.2f}  {td * 1e6:9.1f} us  {ts * 1e6:9.1f} us  {td / ts:5.2f}x")


if __name__ == "__main__":
    main()
