"""A zoo network trained by dnnc and its PyTorch twin trained the same way, on the same split.

Both see the embedded digits' 8,000 training examples in the same order each epoch (dnnc's
permutation), normalized by the training set's mean and std, with the network's train { }
settings: SGD with momentum and weight decay, a per-step cosine schedule, the last partial
batch dropped. Prints each one's test accuracy on the 2,000 held out.

Usage: python benchmarks/zoo_accuracy.py [--net resnet20] [--threads 2] [--skip-dnnc]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

import dnnc
from dnnc.io import data as datamod
from dnnc.training.train import settings_from

ROOT = Path(__file__).resolve().parent.parent


def torch_resnet20(torch):
    """ResNet-20 as examples/resnet20.net writes it: basic blocks, 1x1 conv shortcuts."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, c, stride):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(cin, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                   nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
            self.s = (nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))
                      if stride > 1 or cin != c else nn.Identity())

        def forward(self, x):
            return torch.relu(self.a(x) + self.s(x))

    layers = [nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for stage, c in enumerate((16, 32, 64)):
        for b in range(3):
            layers.append(Block(cin, c, 2 if stage > 0 and b == 0 else 1))
            cin = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


TWINS = {"resnet20": torch_resnet20}


def train_torch(name: str, threads: int, seed: int = 0) -> tuple[float, float]:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    s = settings_from(dnnc.load(ROOT / "examples" / f"{name}.net"))
    ds = datamod.embedded()
    mean, std = datamod.normalization(ds.x_train)
    xt = torch.tensor((ds.x_train - mean) / std, dtype=torch.float32).reshape(-1, 1, 28, 28)
    xs = torch.tensor((ds.x_test - mean) / std, dtype=torch.float32).reshape(-1, 1, 28, 28)
    yt, ys = torch.tensor(ds.y_train, dtype=torch.long), torch.tensor(ds.y_test, dtype=torch.long)
    model = TWINS[name](torch)
    o = s.optimizer
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay)
    steps = len(xt) // s.batch
    total = s.epochs * steps
    t0 = time.perf_counter()
    for epoch in range(s.epochs):
        model.train()
        order = np.random.default_rng([seed, epoch]).permutation(len(xt))
        for k in range(steps):
            t = epoch * steps + k
            for grp in opt.param_groups:
                grp["lr"] = 0.5 * o.lr * (1 + math.cos(math.pi * t / total))
            idx = torch.tensor(order[k * s.batch:(k + 1) * s.batch])
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"  torch epoch {epoch + 1}/{s.epochs}  loss {loss.item():.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        acc = float((model(xs).argmax(1) == ys).float().mean())
    return acc, time.perf_counter() - t0


def train_dnnc(name: str, threads: int, out: Path) -> float:
    from dnnc.training.train import train

    result = train(dnnc.load(ROOT / "examples" / f"{name}.net"), out=str(out), threads=threads)
    return result.evaluation.accuracy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--net", default="resnet20", choices=sorted(TWINS), help="zoo network (default: resnet20)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both (default: 2)")
    ap.add_argument("--skip-dnnc", action="store_true", help="train only the PyTorch twin")
    args = ap.parse_args(argv)
    if not args.skip_dnnc:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            acc = train_dnnc(args.net, args.threads, Path(d) / f"{args.net}.npz")
        print(f"dnnc    {args.net}: test accuracy {100 * acc:.2f}%")
    acc, secs = train_torch(args.net, args.threads)
    print(f"PyTorch {args.net}: test accuracy {100 * acc:.2f}% ({secs:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
