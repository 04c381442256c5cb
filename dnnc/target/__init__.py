"""Targets: what the driver asks of the machine it compiles for.

A target supplies four things, and nothing above this interface knows more of a machine:
- `machine`: the model the default schedule reads (vector width, cache, cores);
- `default_schedule` and `default_algorithms`: the steps it chooses when the user names none;
- `emit`: its code generator, loop-nest IR (with a memory plan) to LLVM IR text;
- `compile` and `load`: machine code from that text, and a loaded program bound to buffers.
`dnnc --target NAME` and `Network.compile(target=NAME)` pick one by name (`get`).
"""
from __future__ import annotations

from ..base.errors import DnncError
from .base import Target
from .cpu import CPU

TARGETS: dict[str, Target] = {CPU.name: CPU}


def get(target: str | Target) -> Target:
    """The target named `target` (a Target is returned as it is)."""
    if isinstance(target, Target):
        return target
    if target not in TARGETS:
        raise DnncError(f"unknown target '{target}' (targets: {', '.join(TARGETS)})")
    return TARGETS[target]


def names() -> list[str]:
    return list(TARGETS)
