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
from .cuda import CUDA, PRECISIONS, CudaTarget

TARGETS: dict[str, Target] = {CPU.name: CPU, CUDA.name: CUDA}


def get(target: str | Target) -> Target:
    """The target named `target` (a Target is returned as it is): "cpu", or "cuda" with, after
    colons, the GPU's ordinal and the tensor cores' precision ("cuda:1", "cuda:tf32")."""
    if isinstance(target, Target):
        return target
    name, *options = target.split(":")
    if name == "cuda" and options:
        ordinals = [int(o) for o in options if o.isdigit()]
        precisions = [o for o in options if not o.isdigit()]
        if len(ordinals) <= 1 and len(precisions) <= 1 and all(p in PRECISIONS for p in precisions):
            return CudaTarget(ordinals[0] if ordinals else 0, precisions[0] if precisions else "fp32")
    if target not in TARGETS:
        raise DnncError(f"unknown target '{target}' (targets: {', '.join(TARGETS)}; "
                        f"cuda[:N][:{'|'.join(PRECISIONS)}])")
    return TARGETS[target]


def on_device(target: str, device: int = 0, precision: str = "fp32") -> str:
    """The name of `target` on GPU `device` in `precision` ("cuda:N:tf32"); other targets
    keep their name, and compute in fp32."""
    if precision not in PRECISIONS:
        raise DnncError(f"unknown precision '{precision}' (precisions: {', '.join(PRECISIONS)})")
    if target != "cuda":
        if precision != "fp32":
            raise DnncError(f"precision {precision} is the tensor cores' of --target cuda; "
                            f"the {target} target computes in fp32")
        return target
    return "cuda" + (f":{device}" if device else "") + (f":{precision}" if precision != "fp32" else "")


def names() -> list[str]:
    return list(TARGETS)
