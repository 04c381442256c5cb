"""The GPU's default steps at the tensor level: reads made coalesced by permuted copies.

On a GPU the threads of a warp run the statement's last axis side by side (ir/passes/grid.py
makes the innermost bound loop the fastest-moving thread index). A reduction's read that
such an axis indexes in a dimension other than the last, like a dense layer's weight w[u, k]
with threads along u, sends each thread of a warp to its own row: 32 cache lines a step. A
Pack step reads it from a copy with that dimension last (w[k, u]), so neighbouring threads
read neighbouring elements; the copy of a weight is made once per update (in the prepare
program when inference reads it). The rest of the GPU's schedule is loop-IR passes (the
target's `bind`).
"""
from __future__ import annotations

from ..te.expr import Var
from ..te.stmt import TStmt
from .analysis import hot_loads, packable, single_reduce
from .steps import Pack


def gpu_schedule(stmts: list[TStmt]) -> list:
    """Pack steps for each reduction's reads that its last axis indexes in another dimension."""
    steps: list = []
    seen: dict[str, int] = {}
    for st in stmts:
        nth = seen.get(st.tensor, 0)
        seen[st.tensor] = nth + 1
        if not st.axes or st.index is not None or single_reduce(st) is None:
            continue
        v = st.axes[-1][0]
        done = set()
        for ld in hot_loads(st):
            if ld.tensor in done or not packable(ld, v):
                continue
            d = next(k for k, ix in enumerate(ld.index) if ix == Var(v))
            steps.append(Pack(ld.tensor, tuple(k for k in range(len(ld.index)) if k != d) + (d,), st.tensor, nth))
            done.add(ld.tensor)
    return steps
