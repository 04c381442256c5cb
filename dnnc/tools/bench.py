"""`dnnc bench`: time a compiled network, as a whole and kernel by kernel (like `caffe time`).

The whole step is the one native call a model makes; per kernel, each kernel's own function
is called on the same buffers. Times are medians of repeated runs; GFLOP/s count the
arithmetic of the kernel's tensor expressions (te.count_flops).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from ..api import Model, Network
from ..driver.compile import profile
from ..driver.programs import job_for
from ..front.settings import settings_from
from ..te.optim import HYPER
from ..te.stmt import count_flops
from ..base.units import human_seconds


@dataclass
class KernelTime:
    name: str
    seconds: float
    flops: int


@dataclass
class Report:
    step_seconds: float
    kernels: list[KernelTime]
    batch: int
    compile_seconds: float
    training: bool
    threads: int


def _median(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(net: Network, batch: int = 64, training: bool = False, threads: int | None = None,
          repeat: int = 20, per_layer: bool = True, **compile_options) -> Report:
    t0 = time.perf_counter()
    model = net.compile(batch=batch, threads=threads, **compile_options)
    optimizer = None
    if training:
        optimizer = settings_from(net).optimizer
        ex = model.executable("train", optimizer)
        model.buffers[HYPER][...] = optimizer.hyper(1, 0.0)  # lr 0: timing must not train
    else:
        ex = model.executable("forward")
    compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    for n in model.graph.inputs:
        model.buffers[n][...] = rng.normal(size=model.buffers[n].shape)
    for n in model.graph.labels:
        if n in model.buffers:
            k = model.graph.classes.get(n)
            shape = model.buffers[n].shape
            model.buffers[n][...] = rng.integers(0, k, shape) if k else rng.normal(size=shape)
    step = _median(ex.run, repeat)
    kernels: list[KernelTime] = []
    if per_layer:  # each kernel alone, with the FLOPs of the statements it computes
        u = ex.unit
        # a group's FLOPs go to the kernel of its name; a target that splits it into several
        # launches (a GPU: NAME#1, NAME.part) shows the others' times beside it, with none
        flops = {name: sum(count_flops(s) for s in stmts) for name, stmts in u.groups}
        for k in u.program.kernels:
            call = model.target.kernel(ex.exe, u.program, k, u.offsets)
            if call is not None:
                kernels.append(KernelTime(k.name, _median(call, repeat), flops.get(k.name, 0)))
    return Report(step, kernels, batch, compile_s, training, model.threads)


def render(r: Report) -> str:
    what = "training step (forward, backward, update)" if r.training else "forward pass"
    lines = [f"{what}, batch {r.batch}, {r.threads} thread(s)"]
    if r.kernels:
        width = max(len(k.name) for k in r.kernels)
        total = sum(k.seconds for k in r.kernels)
        lines.append(f"{'kernel'.ljust(width)}  {'time':>10}  {'GFLOP/s':>8}  {'share':>6}")
        for k in r.kernels:
            gf = k.flops / k.seconds / 1e9 if k.seconds > 0 else 0.0
            lines.append(f"{k.name.ljust(width)}  {human_seconds(k.seconds):>10}  {gf:8.2f}  "
                         f"{100 * k.seconds / total:5.1f}%")
        lines.append(f"{'sum of kernels'.ljust(width)}  {human_seconds(total):>10}")
    flops = sum(k.flops for k in r.kernels)
    lines.append(f"whole step: {human_seconds(r.step_seconds)} (median), {r.batch / r.step_seconds:,.0f} images/s"
                 + (f", {flops / r.step_seconds / 1e9:.2f} GFLOP/s" if flops else ""))
    lines.append(f"compile: {human_seconds(r.compile_seconds)}")
    return "\n".join(lines)


def compile_profile(net: Network, batch: int = 64, training: bool = False, schedule=True,
                    target: str = "cpu", threads: int | None = None) -> str:
    """The seconds of each stage of the step's program, compiled cold, as a table."""
    g = net.at_batch(batch, training=training)
    optimizer = settings_from(net).optimizer if training else None
    job = job_for(g, "train" if training else "forward", optimizer, schedule=schedule, target=target)
    times = profile(job)
    total = sum(t for _, t in times)
    width = max(len(n) for n, _ in times)
    lines = [f"compile profile: {'training step' if training else 'forward pass'} of {net.name}, batch {batch}",
             f"{'stage'.ljust(width)}  {'time':>10}   share"]
    for name, t in times:
        lines.append(f"{name.ljust(width)}  {human_seconds(t):>10}  {100 * t / total:5.1f}%")
    lines.append(f"{'total'.ljust(width)}  {human_seconds(total):>10}")
    return "\n".join(lines)
