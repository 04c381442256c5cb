"""A training step of a zoo network, dnnc against PyTorch eager, side by side.

The same weights and batch in both: dnnc's `train` program (forward, loss, backward, SGD with
momentum) and the graph's PyTorch twin (tests/torch_twin.py) in float32 with torch.optim.SGD;
they alternate step by step; medians. The learning rate is 0, so both time the full step on
the same weights throughout.

With `--target cuda` both run on the GPU (PyTorch with cuDNN, TF32 off: fp32 against fp32),
each step awaited (dnnc's reads its loss; PyTorch's synchronizes). `--precision tf32` lets
both use TF32 tensor cores; `--precision bf16` gives dnnc bf16 operands and PyTorch bf16
autocast. `--inference` times the forward pass (batchnorm from its running statistics) instead.

Usage: python benchmarks/zoo_training.py [--net resnet18] [--batch 16] [--threads 1] [--repeat 5]
       [--target cpu|cuda] [--precision fp32|tf32|bf16] [--inference]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

_t = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
os.environ.setdefault("OMP_NUM_THREADS", _t)
import numpy as np  # noqa: E402

import dnnc  # noqa: E402
from dnnc.te.optim import HYPER, Optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="resnet18")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--target", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--inference", action="store_true")
    args = ap.parse_args(argv)
    import torch
    from torch_twin import Twin

    torch.set_num_threads(args.threads)
    net = dnnc.load(ROOT / "examples" / f"{args.net}.net")
    t0 = time.perf_counter()
    model = net.compile(batch=args.batch, threads=args.threads, target=args.target, precision=args.precision)
    opt = Optimizer("sgd", 0.0, 0.9)
    ex = model.executable("forward") if args.inference else model.executable("train", opt)
    compile_s = time.perf_counter() - t0
    g = model.graph
    inp, lab = g.inputs[0], g.labels[0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, *net.inputs[inp])).astype(np.float32)
    y = rng.integers(0, g.classes[lab], args.batch)
    model.buffers[inp][...] = x
    if not args.inference:
        model.buffers[lab][...] = y
        model.buffers[HYPER][...] = opt.hyper(1, 0.0)
    gpu = args.target == "cuda"
    dev = "cuda" if gpu else "cpu"
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    twin = Twin(net.at_batch(args.batch, training=True), model.params, model.states, dtype=torch.float32, device=dev)
    topt = torch.optim.SGD(list(twin.params.values()), lr=0.0, momentum=0.9)
    feed = {inp: torch.from_numpy(x).to(dev), lab: torch.from_numpy(y).to(dev)}

    autocast = torch.autocast("cuda", torch.bfloat16, enabled=gpu and args.precision == "bf16")
    out = next(iter(net.outputs))

    def tstep():
        if args.inference:
            with torch.no_grad(), autocast:
                twin.run(feed, training=False)
        else:
            topt.zero_grad()
            with autocast:
                loss = twin.run(feed, training=True)["loss"]
            loss.backward()
            topt.step()
        if gpu:
            torch.cuda.synchronize()

    def ours_step():
        ex.run()
        float(model.buffers[out if args.inference else "loss"].flat[0])

    ours_step(), tstep()
    ours, theirs = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        ours_step()
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        tstep()
        theirs.append(time.perf_counter() - t)
    a, b = statistics.median(ours), statistics.median(theirs)
    where = f"GPU {args.precision}" if gpu else f"{args.threads} thread(s)"
    what = "inference" if args.inference else "training step"
    print(f"{args.net} {what}, batch {args.batch}, {where}: dnnc {a * 1e3:.1f} ms, "
          f"PyTorch eager {b * 1e3:.1f} ms, ratio {b / a:.2f}x (medians of {args.repeat}); "
          f"dnnc compile {compile_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
