"""The verifier: run after lowering and after every pass; failing code is never emitted.

It proves, by interval analysis over loop ranges and enclosing guards, that every load and
store is in bounds; that every register is declared before use; that every temporary buffer
is written before it is read; and that no two iterations of a parallel loop store to the
same element (each store's index must depend on the parallel variable), and that no register
declared outside a parallel (or GPU grid, block or thread) loop is updated inside it (the
iterations would race on it). A register tile is private to its thread; a GPU block's shared
buffer to its block, and no phase (thread loop) of the block both writes and reads one, since
only the barrier after a phase orders its threads' accesses.
"""
from __future__ import annotations

from ..te import affine
from ..base.errors import CompilerBug
from ..te.expr import Expr, Load, Reduce, Scalar, Select, free_vars, show
from . import If, Let, Loop, Mma, Program, Set, Stmt, Store, exprs_in, walk


class VerifyError(CompilerBug):
    pass


def verify(p: Program) -> Program:
    """Return p unchanged if it is safe to emit; raise VerifyError naming the first fault."""
    shapes = {b.name: b.shape for b in p.buffers}
    kinds = {b.name: b.kind for b in p.buffers}
    written: set[str] = set()
    for k in p.kernels:
        _Checker(k.name, shapes, kinds, written).block(k.body, {}, {}, set(), [])
    return p


class _Checker:
    def __init__(self, kernel, shapes, kinds, written):
        self.kernel, self.shapes, self.kinds, self.written = kernel, shapes, kinds, written
        self.outer_regs: dict[str, set] = {}  # parallel loop variable -> registers declared outside it

    def fail(self, msg: str):
        raise VerifyError(f"kernel {self.kernel}: {msg}")

    def block(self, stmts, ranges, facts, regs: set, parallel: list[str]):
        regs = set(regs)
        for s in stmts:
            self.stmt(s, ranges, facts, regs, parallel)

    def stmt(self, s: Stmt, ranges, facts, regs, parallel):
        if isinstance(s, Loop):
            if s.extent < 1:
                self.fail(f"loop {s.var} has extent {s.extent}")
            if s.var in ranges:
                self.fail(f"loop variable {s.var} is already bound")
            inner = dict(ranges)
            inner[s.var] = (0, s.extent - 1)
            at_once = s.kind in ("parallel", "grid", "block", "thread")  # iterations that run at once
            if at_once:
                self.outer_regs[s.var] = set(regs)
            if s.kind == "thread":
                self.phase(s)
            self.block(s.body, inner, facts, regs, parallel + ([(s.var, s.kind)] if at_once else []))
        elif isinstance(s, If):
            self.expr(s.cond, ranges, facts, regs)
            self.block(s.then, ranges, affine.facts_from(s.cond, ranges, facts), regs, parallel)
            self.block(s.orelse, ranges, affine.facts_from(s.cond, ranges, facts, negate=True), regs, parallel)
        elif isinstance(s, Store):
            self.access(s.buffer, s.index, ranges, facts, "store to")
            self.expr(s.value, ranges, facts, regs)
            for v, kind in parallel:
                if self.kinds.get(s.buffer) == "local":
                    break  # register tiles are private to each thread
                if self.kinds.get(s.buffer) == "shared" and kind == "block":
                    continue  # each block has its own
                if not any(v in free_vars(i) for i in s.index):
                    self.fail(f"store to {s.buffer} in parallel loop {v} does not depend on {v}: iterations race")
            self.written.add(s.buffer)
        elif isinstance(s, Let):
            self.expr(s.value, ranges, facts, regs)
            regs.add(s.name)
        elif isinstance(s, Mma):
            self.block(s.expand(), ranges, facts, regs, parallel)
        elif isinstance(s, Set):
            if s.name not in regs:
                self.fail(f"register {s.name} is set before it is declared")
            for v, _ in parallel:
                if s.name in self.outer_regs[v]:
                    self.fail(f"register {s.name} is declared outside parallel loop {v} and updated in it: "
                              f"iterations race")
            self.expr(s.value, ranges, facts, regs)
        else:
            self.fail(f"unknown statement {s!r}")

    def phase(self, s: Loop):
        """A thread loop neither writes a shared buffer it reads nor reads one it writes."""
        shared = {n for n, kind in self.kinds.items() if kind == "shared"}
        body = tuple(_expanded(s.body))
        stored = {x.buffer for x in walk(body) if isinstance(x, Store)} & shared
        for e in exprs_in(body):
            for ld in e.walk():
                if isinstance(ld, Load) and ld.tensor in stored:
                    self.fail(f"thread loop {s.var} writes and reads shared {ld.tensor}: threads race")

    def expr(self, e: Expr, ranges, facts, regs):
        if isinstance(e, Reduce):
            self.fail("a reduction survived lowering")
        if isinstance(e, Scalar) and e.name not in regs:
            self.fail(f"register {e.name} is used before it is declared")
        if isinstance(e, Select):
            self.expr(e.cond, ranges, facts, regs)
            self.expr(e.a, ranges, affine.facts_from(e.cond, ranges, facts), regs)
            self.expr(e.b, ranges, affine.facts_from(e.cond, ranges, facts, negate=True), regs)
            return
        if isinstance(e, Load):
            if self.kinds.get(e.tensor) == "temp" and e.tensor not in self.written:
                self.fail(f"{e.tensor} is read before it is written")
            self.access(e.tensor, e.index, ranges, facts, "load from")
        for c in e.children():
            self.expr(c, ranges, facts, regs)

    def access(self, buf, index, ranges, facts, what):
        if buf not in self.shapes:
            self.fail(f"{what} unknown buffer {buf}")
        shape = self.shapes[buf]
        if len(index) != len(shape):
            self.fail(f"{what} {buf} with {len(index)} indices, rank {len(shape)}")
        for k, ix in enumerate(index):
            b = affine.bounds(ix, ranges, facts)
            if b is None:
                self.fail(f"{what} {buf}: cannot bound index {k} ({show(ix)})")
            if b[0] < 0 or b[1] >= shape[k]:
                self.fail(f"{what} {buf}: index {k} ({show(ix)}) spans [{b[0]}, {b[1]}], "
                          f"outside [0, {shape[k] - 1}]")


def _expanded(stmts):
    """stmts with each tensor-core step as the per-thread arithmetic it stands for."""
    for s in stmts:
        if isinstance(s, Mma):
            yield from s.expand()
        elif isinstance(s, Loop):
            yield Loop(s.var, s.extent, tuple(_expanded(s.body)), s.kind)
        elif isinstance(s, If):
            yield If(s.cond, tuple(_expanded(s.then)), tuple(_expanded(s.orelse)))
        else:
            yield s
