"""LeNet-5 training step at batch 64: dnnc next to PyTorch eager, side by side in one run.

Both train the same network (same weights at the start, SGD momentum 0.9) on the same
batches; the two are timed alternately, one thread each, and the medians are compared.
With --full, PyTorch also runs the 15-epoch training of examples/lenet5.net on the embedded
digits (its train { } settings), to compare accuracy and wall time with `dnnc train`.

Usage: python benchmarks/lenet5_train.py [--steps 30] [--threads 1] [--full]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np

import dnnc
from dnnc.io import data as datamod
from dnnc.te.optim import HYPER, Optimizer
from targets import LENET5_LAYERS, copy_params, torch_lenet5  # benchmarks/ is on sys.path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lenet5.net"


def step_times(args, torch):
    net = dnnc.load(EXAMPLE)
    model = net.compile(batch=64)
    opt = Optimizer("sgd", 0.02, 0.9)
    t0 = time.perf_counter()
    ex = model.executable("train", opt)
    compile_s = time.perf_counter() - t0
    tnet = torch_lenet5(torch)
    copy_params(model, tnet, LENET5_LAYERS, torch)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.02, momentum=0.9)
    lossf = torch.nn.CrossEntropyLoss()
    ds = datamod.embedded()
    x = ds.x_train[:64].reshape(64, 1, 28, 28).astype(np.float32)
    y = ds.y_train[:64]
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    model.buffers["image"][...] = x
    model.buffers["digit"][...] = y
    model.buffers[HYPER][...] = opt.hyper(1, 0.02)

    def dnnc_step():
        ex.run()

    def torch_step():
        topt.zero_grad()
        loss = lossf(tnet(tx), ty)
        loss.backward()
        topt.step()

    for _ in range(3):
        dnnc_step()
        torch_step()
    td, tt = [], []
    for _ in range(args.steps):
        t = time.perf_counter()
        dnnc_step()
        td.append(time.perf_counter() - t)
        t = time.perf_counter()
        torch_step()
        tt.append(time.perf_counter() - t)
    md, mt = statistics.median(td), statistics.median(tt)
    print(f"LeNet-5 training step, batch 64, SGD momentum, {args.threads} thread(s), median of {args.steps}")
    print(f"  dnnc          : {md * 1e3:8.2f} ms  {64 / md:8.0f} images/s   (training program compiled in "
          f"{compile_s:.2f} s)")
    print(f"  PyTorch eager : {mt * 1e3:8.2f} ms  {64 / mt:8.0f} images/s   (torch {torch.__version__})")
    print(f"  dnnc / PyTorch images/s: {mt / md:.2f}x")


def torch_full(args, torch):
    """examples/lenet5.net's training in PyTorch: same data, normalization, settings."""
    torch.manual_seed(args.seed)
    ds = datamod.embedded()
    mean, std = datamod.normalization(ds.x_train)
    xt = torch.from_numpy(((ds.x_train - mean) / std).reshape(-1, 1, 28, 28).astype(np.float32))
    xs = torch.from_numpy(((ds.x_test - mean) / std).reshape(-1, 1, 28, 28).astype(np.float32))
    yt, ys = torch.from_numpy(ds.y_train), torch.from_numpy(ds.y_test)
    tnet = torch_lenet5(torch)
    epochs, batch, lr = 15, 64, 0.02
    steps = len(xt) // batch
    opt = torch.optim.SGD(tnet.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / (epochs * steps))))
    lossf = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = torch.from_numpy(np.random.default_rng([args.seed, epoch]).permutation(len(xt)))
        tnet.train()
        for k in range(steps):
            idx = order[k * batch:(k + 1) * batch]
            opt.zero_grad()
            lossf(tnet(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
        tnet.eval()
        with torch.no_grad():
            acc = (tnet(xs).argmax(1) == ys).float().mean().item()
        print(f"  torch epoch {epoch + 1:2d}: accuracy {100 * acc:.2f}%  ({time.perf_counter() - t0:.1f} s)")
    print(f"PyTorch eager, 15 epochs, seed {args.seed}: {100 * acc:.2f}% in {time.perf_counter() - t0:.1f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        raise SystemExit("this comparison needs PyTorch: pip install torch==2.13.0")
    torch.set_num_threads(args.threads)
    step_times(args, torch)
    if args.full:
        torch_full(args, torch)


if __name__ == "__main__":
    main()
