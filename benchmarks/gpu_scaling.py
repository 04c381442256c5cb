"""Synchronous data parallelism across MPI ranks: images/s and the all-reduce's share of a step.

Run under mpiexec, once per number of ranks G (one GPU a rank with --target cuda):

    mpiexec -n G python benchmarks/gpu_scaling.py --net resnet18 --batch 64 --target cuda

Each rank trains its shard (`--batch` examples: the global batch is G times that) of random
inputs of the network's shape through the same path as `dnnc train --distributed`
(dnnc/training/distributed.py). After `--warmup` steps it times `--steps` steps; rank 0
prints one line: G, images/s over all ranks, the median step, and the all-reduce's time per
step (the gradients' trip to the host, MPI's all-reduce and the way back), and whether
every rank ends with identical parameters. Efficiency is images/s at G over G times images/s
at G = 1, from two runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dnnc  # noqa: E402
from dnnc.target import on_device  # noqa: E402
from dnnc.te.optim import Optimizer  # noqa: E402
from dnnc.training import distributed  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="resnet18")
    ap.add_argument("--batch", type=int, default=64, help="examples per rank")
    ap.add_argument("--target", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    comm = distributed.world()
    size, rank = comm.Get_size(), comm.Get_rank()
    net = dnnc.load(ROOT / "examples" / f"{args.net}.net")
    opt = Optimizer("sgd", lr=0.0, momentum=0.9)  # lr 0: the same weights every step
    t0 = time.perf_counter()
    dist = distributed.Distributed(net, args.batch * size, opt, comm, seed=0,
                                   target=on_device(args.target, 0, args.precision), threads=1)
    compiled = time.perf_counter() - t0
    g = dist.master.graph
    rng = np.random.default_rng(0)
    shape = (args.batch * size,) + tuple(g.tensors[g.inputs[0]].shape[1:])
    x = rng.standard_normal(shape).astype(np.float32)
    classes = g.classes[g.labels[0]]
    y = rng.integers(0, classes, (args.batch * size,) + tuple(g.tensors[g.labels[0]].shape[1:])).astype(np.float32)
    hyper = opt.hyper(1, 0.0)
    times = []
    for k in range(args.warmup + args.steps):
        if k == args.warmup:
            dist.steps, dist.step_seconds, dist.reduce_seconds = 0, 0.0, 0.0
        comm.Barrier()
        t = time.perf_counter()
        dist.step(x, y, hyper, k + 1)
        comm.Barrier()
        times.append(time.perf_counter() - t)
    step = statistics.median(times[args.warmup:])
    timing = dist.timing()
    same = dist.identical()
    if rank == 0:
        print(f"{args.net} {args.precision} on {dist.describe()}: batch {args.batch} a rank, "
              f"{args.batch * size / step:,.0f} images/s, step {1e3 * step:.2f} ms (median of {args.steps}); "
              f"{timing}; compiled in {compiled:.1f} s; parameters {'identical' if same else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
