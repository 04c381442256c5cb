"""The memory planner: temporaries share workspace storage when their lifetimes do not overlap."""
from __future__ import annotations

from ..te.expr import Load
from . import If, Loop, Mma, Program, Store


def lifetimes(p: Program) -> dict[str, tuple[int, int]]:
    """First and last kernel index touching each temporary."""
    temps = {b.name for b in p.buffers if b.kind == "temp"}
    life: dict[str, tuple[int, int]] = {}

    def touch(name, k):
        if name in temps:
            a, b = life.get(name, (k, k))
            life[name] = (min(a, k), max(b, k))

    for k, kern in enumerate(p.kernels):
        for name in buffers_touched(kern.body):
            touch(name, k)
    return life


def buffers_touched(stmts) -> list[str]:
    """The buffers that statements read or write, in order of first use; a store's buffer
    comes after the buffers its index and value read."""
    seen: dict[str, None] = {}

    def reads(e):
        for x in e.walk():
            if isinstance(x, Load):
                seen.setdefault(x.tensor)

    def block(stmts):
        for s in stmts:
            if isinstance(s, Loop):
                block(s.body)
            elif isinstance(s, If):
                reads(s.cond)
                block(s.then)
                block(s.orelse)
            elif isinstance(s, Store):
                for i in s.index:
                    reads(i)
                reads(s.value)
                seen.setdefault(s.buffer)
            elif isinstance(s, Mma):
                for name in (s.a, s.b, s.acc):
                    seen.setdefault(name)
            else:
                reads(s.value)

    block(stmts)
    return list(seen)


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
