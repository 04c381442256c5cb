"""Cost grows linearly with the batch: a training step of every zoo network at batch 8, 16, 32
and 64, and each time against linear growth from batch 8 (1.00 is exactly linear).

Each step is timed by the wall clock and by the process's CPU time (all its threads): on a
busy machine a long step is preempted and its wall time grows faster than its work, which
the CPU time does not show. Medians.

Usage: python benchmarks/batch_scaling.py [--threads 1] [--repeat 5] [--size 64] [NET ...]
The networks for 224x224 images run at --size x --size (their dense layers follow), so the
table fits in minutes on two cores; --size 224 measures them as written.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import dnnc
from dnnc.te.optim import HYPER
from dnnc.training.train import settings_from

ROOT = Path(__file__).resolve().parent.parent
ZOO = ["lenet5", "mlp_dropout", "resnet20", "densenet", "resnet18", "mobilenetv2", "squeezenet", "vgg11_bn"]
BATCHES = (8, 16, 32, 64)


def network(name: str, size: int):
    net = dnnc.load(ROOT / "examples" / f"{name}.net")
    (inp, shape), = net.inputs.items()
    if shape[1] == 224 and size != 224:
        net = net.with_inputs({inp: (shape[0], size, size)})
    return net, net.inputs[inp]


def step_times(net, batch: int, threads: int, repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of one training step (learning rate 0: timing must not train)."""
    model = net.compile(batch=batch, threads=threads)
    opt = settings_from(net).optimizer
    ex = model.executable("train", opt)
    model.buffers[HYPER][...] = opt.hyper(1, 0.0)
    rng = np.random.default_rng(0)
    for n in model.graph.inputs:
        model.buffers[n][...] = rng.normal(size=model.buffers[n].shape)
    for n in model.graph.labels:
        model.buffers[n][...] = rng.integers(0, model.graph.classes[n], model.buffers[n].shape)
    ex.run()
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        ex.run()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("nets", nargs="*", default=ZOO, help="zoo networks (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="threads of the parallel loops (default: 1)")
    ap.add_argument("--repeat", type=int, default=5, help="timed steps per batch size; medians (default: 5)")
    ap.add_argument("--size", type=int, default=64, help="input size for the 224x224 networks (default: 64)")
    args = ap.parse_args(argv)
    print(f"training step, {args.threads} thread(s), median of {args.repeat}; "
          f"ratio = (time / batch) / (time at 8 / 8), wall clock | CPU time")
    head = f"{'network':<12} {'input':<9}" + "".join(f" {'batch ' + str(b):>21}" for b in BATCHES) + "  worst"
    print(head)
    print("-" * len(head))
    for name in args.nets:
        net, shape = network(name, args.size)
        t = {b: step_times(net, b, args.threads, args.repeat) for b in BATCHES}
        ratio = {b: [(t[b][k] / b) / (t[8][k] / 8) for k in (0, 1)] for b in BATCHES}
        cells = "".join(f" {_ms(t[b][0]):>7} {ratio[b][0]:4.2f}|{ratio[b][1]:4.2f}x" for b in BATCHES)
        worst = max(r for b in BATCHES for r in ratio[b])
        print(f"{name:<12} {'x'.join(map(str, shape)):<9}{cells}  {worst:.2f}", flush=True)
    return 0


def _ms(s: float) -> str:
    if s < 0.01:
        return f"{s * 1e3:.2f}ms"
    return f"{s * 1e3:.1f}ms" if s < 10 else f"{s:.1f}s"


if __name__ == "__main__":
    sys.exit(main())
