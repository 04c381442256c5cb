"""The memory planner: temporaries share workspace storage when their lifetimes do not overlap."""
from __future__ import annotations

from ..te.expr import Load
from . import If, Loop, Program, Store


def lifetimes(p: Program) -> dict[str, tuple[int, int]]:
    """First and last kernel index touching each temporary."""
    temps = {b.name for b in p.buffers if b.kind == "temp"}
    life: dict[str, tuple[int, int]] = {}

    def touch(name, k):
        if name in temps:
            a, b = life.get(name, (k, k))
            life[name] = (min(a, k), max(b, k))

    def block(stmts, k):
        for s in stmts:
            if isinstance(s, Loop):
                block(s.body, k)
            elif isinstance(s, If):
                for x in s.cond.walk():
                    if isinstance(x, Load):
                        touch(x.tensor, k)
                block(s.then, k)
                block(s.orelse, k)
            else:
                if isinstance(s, Store):
                    touch(s.buffer, k)
                    exprs = list(s.index) + [s.value]
                else:
                    exprs = [s.value]
                for e in exprs:
                    for x in e.walk():
                        if isinstance(x, Load):
                            touch(x.tensor, k)

    for k, kern in enumerate(p.kernels):
        block(kern.body, k)
    return life


def plan(p: Program, align: int = 16) -> tuple[dict[str, int], int]:
    """Element offsets of each temporary in one workspace, and the workspace size (elements).

    Greedy first fit in order of first use: a temporary takes the lowest offset whose range
    is free for its whole lifetime. Offsets are multiples of `align` elements (64 bytes).
    """
    life = lifetimes(p)
    sizes = {b.name: b.size for b in p.buffers if b.kind == "temp"}
    placed: list[tuple[int, int, int, int]] = []  # offset, end, first, last
    offsets: dict[str, int] = {}
    for name in sorted(sizes, key=lambda n: (life.get(n, (0, 0))[0], n)):
        first, last = life.get(name, (0, 0))
        size = -(-sizes[name] // align) * align
        busy = sorted((o, e) for o, e, f, l in placed if not (l < first or f > last))
        off = 0
        for o, e in busy:
            if off + size <= o:
                break
            off = max(off, e)
        offsets[name] = off
        placed.append((off, off + size, first, last))
    total = max((e for _, e, _, _ in placed), default=0)
    return offsets, total
