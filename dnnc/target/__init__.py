"""Targets: what the driver asks of the machine it compiles for.

A target supplies these, and nothing above this interface knows more of a machine:
- `machine`: the model the default schedule reads (vector width, cache, cores);
- `default_schedule` and `default_algorithms`: the steps it chooses when the user names none;
- `bind`: its mapping of loops to parallel hardware (the identity on the CPU, whose
  threads are the schedule's parallel loops);
- `arrays`: the dict of host arrays its programs run on (the GPU's mirrors them on the device);
- `emit`: its code generator, loop-nest IR (with a memory plan) to LLVM IR text;
- `compile` and `load`: machine code from that text, and a loaded program bound to buffers.
`dnnc --target NAME` and `Network.compile(target=NAME)` pick one by name (`get`).
"""
from __future__ import annotations

from ..base.errors import DnncError
from .base import Target
from .cpu import CPU
from .cuda import CUDA, CudaTarget

TARGETS: dict[str, Target] = {CPU.name: CPU, CUDA.name: CUDA}


def get(target: str | Target) -> Target:
    """The target named `target` (a Target is returned as it is)."""
    if isinstance(target, Target):
        return target
    name, _, ordinal = target.partition(":")
    if name == "cuda" and ordinal.isdigit():  # cuda:N, the N-th GPU
        return CudaTarget(int(ordinal))
    if target not in TARGETS:
        raise DnncError(f"unknown target '{target}' (targets: {', '.join(TARGETS)})")
    return TARGETS[target]


def on_device(target: str, device: int) -> str:
    """The name of `target` on GPU `device` ("cuda:N"); other targets keep their name."""
    return f"cuda:{device}" if target == "cuda" and device else target


def names() -> list[str]:
    return list(TARGETS)
