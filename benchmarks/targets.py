"""The performance targets, each measured side by side with its peer in this one run.

dnnc and PyTorch alternate, one thread each unless --threads says otherwise; medians.
Usage: python benchmarks/targets.py [--threads 1] [--repeat 20] [--skip-compile] [--skip-vgg] [--skip-zoo]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# numpy's OpenBLAS takes its thread count when it loads: give it the same threads as the rest
_t = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
os.environ.setdefault("OPENBLAS_NUM_THREADS", _t)
import numpy as np  # noqa: E402

import dnnc
from dnnc.te.optim import HYPER, Optimizer

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


def dense_gemm(args):
    """A 4096x4096 dense layer at batch 256 against numpy's sgemm (OpenBLAS) plus the bias."""
    net = dnnc.load("network d { input x: [4096]\n y = dense(x, 4096)\n output y }")
    model = net.compile(batch=256, threads=args.threads)
    x = np.random.default_rng(4).random((256, 4096), dtype=np.float32)
    model.buffers["x"][...] = x
    w, b = model.params["y.weight"], model.params["y.bias"]
    out = np.empty((256, 4096), np.float32)

    def blas():
        np.matmul(x, w.T, out=out)
        np.add(out, b, out=out)

    ours, theirs = median_pair(model.run_batch, blas, max(5, args.repeat // 2))
    blas()
    model.run_batch()
    np.testing.assert_allclose(model.buffers["y"], out, rtol=1e-3, atol=1e-3)
    flops = 2 * 256 * 4096 * 4096
    row(f"dense 4096x4096, batch 256 ({flops / ours / 1e9:.0f} GFLOP/s)", ours, theirs, "numpy sgemm")


def torch_vgg16(torch, model):
    """PyTorch's VGG-16 (as torchvision builds it) holding the dnnc model's weights."""
    nn = torch.nn
    layers, c = [], 3
    for block, n in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(n):
            layers += [nn.Conv2d(c, block, 3, padding=1), nn.ReLU()]
            c = block
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(512 * 49, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
               nn.Linear(4096, 1000)]
    net = nn.Sequential(*layers)
    if model is not None:
        names = [f"conv{b}_{k}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for k in range(1, n + 1)]
        copy_params(model, net, names + ["fc6", "fc7", "fc8"], torch)
    return net.eval()


def vgg16_child(which: str, threads: int, repeat: int) -> None:
    """One side of the whole-network comparison in a process of its own: time and peak memory."""
    x = np.random.default_rng(5).random((1, 3, 224, 224), dtype=np.float32)
    if which == "torch":  # PyTorch's own initialization: no dnnc model in this process
        import torch

        torch.set_num_threads(threads)
        net, tx = torch_vgg16(torch, None), torch.from_numpy(x)
        with torch.no_grad():
            fn = lambda: net(tx)  # noqa: E731
            fn()
            times = [_time(fn) for _ in range(repeat)]
    else:
        model = dnnc.load(ROOT / "examples" / "vgg16.net").compile(batch=1, threads=threads)
        model.buffers["image"][...] = x
        model.run_batch()
        times = [_time(model.run_batch) for _ in range(repeat)]
    print(json.dumps({"seconds": statistics.median(times), "peak_rss": _peak_rss()}))


def _peak_rss() -> int:
    """This process's peak resident memory in bytes. VmHWM, not getrusage's ru_maxrss, which
    Linux carries over from the parent across exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def vgg16_whole(torch, args):
    """Whole VGG-16 forward at batch 1: time alternating in this process, peak resident memory
    from one process per side (each holds one copy of the 138M weights)."""
    model = dnnc.load(ROOT / "examples" / "vgg16.net").compile(batch=1, threads=args.threads)
    x = np.random.default_rng(5).random((1, 3, 224, 224), dtype=np.float32)
    model.buffers["image"][...] = x
    net = torch_vgg16(torch, model)
    tx = torch.from_numpy(x)
    with torch.no_grad():
        ours, theirs = median_pair(model.run_batch, lambda: net(tx), max(3, args.repeat // 4))
        np.testing.assert_allclose(model.buffers["fc8"], net(tx).numpy(), rtol=2e-3, atol=2e-3)
    row("VGG-16 whole forward, batch 1", ours, theirs, "torch eager")
    del model, net
    peaks = {}
    for which in ("dnnc", "torch"):
        r = subprocess.run([sys.executable, __file__, "--vgg16-child", which, "--threads", str(args.threads)],
                           capture_output=True, text=True, check=True)
        peaks[which] = json.loads(r.stdout.strip().splitlines()[-1])["peak_rss"]
    print(f"{'VGG-16 whole forward, peak resident memory':44s} dnnc {peaks['dnnc'] / 2**20:8.0f} MiB  "
          f"torch eager {peaks['torch'] / 2**20:8.0f} MiB  ratio {peaks['torch'] / peaks['dnnc']:5.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--skip-vgg", action="store_true")
    ap.add_argument("--skip-zoo", action="store_true", help="leave out the zoo against ONNX Runtime")
    ap.add_argument("--vgg16-child", choices=("dnnc", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.vgg16_child:
        os.environ.setdefault("DNNC_CACHE", "0")
        return vgg16_child(args.vgg16_child, args.threads, max(3, args.repeat // 4))
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
    dense_gemm(args)
    if not args.skip_zoo:  # ResNet-18, MobileNetV2 and a CIFAR CNN from ONNX, against ONNX Runtime too
        import zoo_inference

        zoo_inference.main(["--threads", str(args.threads), "--repeat", str(max(5, args.repeat // 2))])
    if not args.skip_vgg:
        vgg(torch, args)
        vgg16_whole(torch, args)


if __name__ == "__main__":
    main()
