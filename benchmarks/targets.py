"""The performance targets, each measured side by side with its peer in this one run.

dnnc and PyTorch alternate, one thread each unless --threads says otherwise; medians.
Usage: python benchmarks/targets.py [--threads 1] [--repeat 20] [--skip-compile] [--skip-vgg]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

import dnnc
from dnnc.optim import HYPER, Optimizer

ROOT = Path(__file__).resolve().parent.parent


def median_pair(a, b, repeat):
    a(), b()
    ta, tb = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def row(name, ours, theirs, peer, batch=None):
    rate = f"  {batch / ours:9,.0f} vs {batch / theirs:9,.0f} images/s" if batch else ""
    print(f"{name:44s} dnnc {ours * 1e3:8.3f} ms  {peer} {theirs * 1e3:8.3f} ms  ratio {theirs / ours:5.2f}x{rate}")


LENET5_LAYERS = ["c1", "c2", "f3", "f4", "logits"]


def torch_lenet5(torch):
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def torch_mlp(torch):
    nn = torch.nn
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def copy_params(model, tnet, names, torch):
    layers = [m for m in tnet if hasattr(m, "weight")]
    with torch.no_grad():
        for n, m in zip(names, layers):
            m.weight.copy_(torch.from_numpy(model.params[f"{n}.weight"]))
            m.bias.copy_(torch.from_numpy(model.params[f"{n}.bias"]))


def training(torch, example, make, names, args, label):
    net = dnnc.load(ROOT / "examples" / example)
    model = net.compile(batch=args.batch, threads=args.threads)
    opt = Optimizer("sgd", 0.01, 0.9)
    ex = model.executable("train", opt)
    tnet = make(torch)
    copy_params(model, tnet, names, torch)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9)
    lossf = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    model.buffers["image"][...] = x
    model.buffers["digit"][...] = y
    model.buffers[HYPER][...] = opt.hyper(1, 0.01)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def tstep():
        topt.zero_grad()
        lossf(tnet(tx), ty).backward()
        topt.step()

    ours, theirs = median_pair(ex.run, tstep, args.repeat)
    row(f"{label} training step, batch {args.batch}", ours, theirs, "torch eager", args.batch)


def inference(torch, args):
    net = dnnc.load(ROOT / "examples" / "lenet5.net")
    model = net.compile(batch=args.batch, threads=args.threads)
    tnet = torch_lenet5(torch).eval()
    copy_params(model, tnet, LENET5_LAYERS, torch)
    x = np.random.default_rng(1).random((args.batch, 1, 28, 28), dtype=np.float32)
    model.buffers["image"][...] = x
    tx = torch.from_numpy(x)
    with torch.no_grad():
        ours, eager = median_pair(model.run_batch, lambda: tnet(tx), args.repeat)
        row(f"LeNet-5 inference, batch {args.batch}", ours, eager, "torch eager", args.batch)
        if args.skip_compile:
            return
        import torch._inductor.config as cfg

        cfg.freezing = True
        t0 = time.perf_counter()
        compiled = torch.compile(tnet)
        compiled(tx)
        print(f"  (torch.compile with freezing took {time.perf_counter() - t0:.1f} s to compile)")
        ours, comp = median_pair(model.run_batch, lambda: compiled(tx), args.repeat)
        row(f"LeNet-5 inference, batch {args.batch}", ours, comp, "torch.compile", args.batch)


def vgg(torch, args):
    for name, ch, size in (("conv1_2", 64, 224), ("conv3_2", 256, 56), ("conv5_2", 512, 14)):
        src = ("op square_mean(x[n, c, h, w]) -> l[] { l[] = mean(a < n, b < c, i < h, j < w) "
               "x[a, b, i, j] * x[a, b, i, j] }\n"
               f"network {name} {{ input x: [{ch}, {size}, {size}]\n"
               f" y = conv(x, filters={ch}, kernel=3, pad=1)\n loss square_mean(y) }}")
        net = dnnc.load(src)
        model = net.compile(batch=1, threads=args.threads)
        rng = np.random.default_rng(2)
        x = rng.random((1, ch, size, size), dtype=np.float32)
        model.buffers["x"][...] = x
        conv = torch.nn.Conv2d(ch, ch, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(model.params["y.weight"]))
            conv.bias.copy_(torch.from_numpy(model.params["y.bias"]))
        tx = torch.from_numpy(x)
        conv_cl = torch.nn.Conv2d(ch, ch, 3, padding=1).to(memory_format=torch.channels_last)
        conv_cl.load_state_dict(conv.state_dict())
        tx_cl = tx.to(memory_format=torch.channels_last)
        reps = max(3, args.repeat // 4)
        with torch.no_grad():
            ours, nchw = median_pair(model.run_batch, lambda: conv(tx), reps)
            _, cl = median_pair(model.run_batch, lambda: conv_cl(tx_cl), reps)
        flops = 2 * ch * ch * 9 * size * size
        best = min(nchw, cl)
        row(f"VGG-16 {name} forward, batch 1 ({flops / ours / 1e9:.0f} GFLOP/s)", ours, best, "torch best ")
        # forward + backward
        opt = Optimizer("sgd", 0.0, 0.0)
        ex = model.executable("train", opt)
        model.buffers[HYPER][...] = 0
        txg = tx.clone().requires_grad_(True)

        def tfb():
            conv.zero_grad()
            out = conv(txg)
            (out * out).mean().backward()

        ours, theirs = median_pair(ex.run, tfb, reps)
        row(f"VGG-16 {name} forward+backward, batch 1", ours, theirs, "torch eager")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--skip-vgg", action="store_true")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        raise SystemExit("these comparisons need PyTorch: pip install torch==2.13.0")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("DNNC_CACHE", "0")
    print(f"dnnc vs PyTorch {torch.__version__}, {args.threads} thread(s), medians of {args.repeat}")
    training(torch, "lenet5.net", torch_lenet5, LENET5_LAYERS, args, "LeNet-5")
    training(torch, "lenet300.net", torch_mlp, ["h1", "h2", "logits"], args, "MLP 784-300-100-10")
    inference(torch, args)
    if not args.skip_vgg:
        vgg(torch, args)


if __name__ == "__main__":
    main()
