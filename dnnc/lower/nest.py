"""Lowering: tensor-expression statements -> loop nests (naive order, before scheduling).

Each statement T[axes] = value becomes loops over its axes (outermost first) around a store.
Each reduction becomes a register initialized before its own loops and updated inside them.
A read that may fall outside its tensor inside a reduction gets a guard, placed in the
innermost loop that its index depends on, so an out-of-range term contributes nothing.
"""
from __future__ import annotations

import math

from ..ir import If, Let, Loop, Set, Stmt, Store
from ..te import affine
from ..te.bounds import read_guards
from ..te.expr import Binary, Const, Expr, Load, Reduce, Scalar, Select, Var, free_vars, rebuild
from ..te.stmt import TStmt
from ..te.expr import rebuild

INIT = {"sum": 0.0, "mean": 0.0, "max": float("-inf"), "min": float("inf"), "argmax": 0.0, "count": 0.0}



def lower_stmt(st: TStmt, shapes: dict[str, tuple[int, ...]]) -> list[Stmt]:
    ctx = _Ctx(shapes, {n: (0, x - 1) for n, x in st.axes})
    pre, value = ctx.value(st.value, {})
    target = st.target
    if st.accumulate:
        value = Binary("+", Load(st.tensor, target), value)
    body: list[Stmt] = pre + [Store(st.tensor, target, value)]
    if st.index is not None:
        # a scatter: a term whose write or reads fall outside their tensors contributes nothing
        write = ctx.guards(Load(st.tensor, target), {})
        return loops(st.axes, body, write + [g for g in ctx.guards(st.value, {}) if g not in write])
    for n, x in reversed(st.axes):
        body = [Loop(n, x, tuple(body))]
    return body


class _Ctx:
    def __init__(self, shapes, ranges):
        self.shapes = shapes
        self.ranges = dict(ranges)
        self.count = 0

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def value(self, e: Expr, facts: dict) -> tuple[list[Stmt], Expr]:
        """Statements to run first, and the expression that then computes e."""
        if isinstance(e, Reduce):
            return self.reduce(e, facts)
        if isinstance(e, Select):
            pc, cond = self.value(e.cond, facts)
            pa, a = self.value(e.a, affine.facts_from(e.cond, self.ranges, facts))
            pb, b = self.value(e.b, affine.facts_from(e.cond, self.ranges, facts, negate=True))
            return pc + pa + pb, Select(cond, a, b, e.loc)
        kids = e.children()
        if not kids or isinstance(e, Load):
            return [], e
        pre: list[Stmt] = []
        new = []
        for k in kids:
            p, v = self.value(k, facts)
            pre += p
            new.append(v)

        return pre, rebuild(e, tuple(new))

    def reduce(self, e: Reduce, facts: dict) -> tuple[list[Stmt], Expr]:
        for n, x in e.axes:
            self.ranges[n] = (0, x - 1)
        acc = self.fresh("acc")
        pre, body = self.value(e.body, facts)
        guards = self.guards(e.body, facts)
        if e.op == "argmax":  # the first maximum in row-major order of the axes, as a number
            val = self.fresh("v")
            best = self.fresh("best")
            flat: Expr = Const(0)
            for n, x in e.axes:
                flat = Binary("+", Binary("*", flat, Const(x)), Var(n))
            update: list[Stmt] = pre + [Let(val, body), If(Binary(">", Scalar(val), Scalar(best)), (
                Set(best, Scalar(val)), Set(acc, affine.simplify(flat))))]
        elif e.op == "count":  # how many terms have every read in range
            update = pre + [Set(acc, Binary("+", Scalar(acc), Const(1.0)))]
        else:
            op = {"sum": "+", "mean": "+", "max": "max", "min": "min"}[e.op]
            update = pre + [Set(acc, Binary(op, Scalar(acc), body))]
        counted = e.op == "mean" and guards
        cnt = self.fresh("cnt") if counted else None
        if cnt:
            update.append(Set(cnt, Binary("+", Scalar(cnt), Const(1.0))))
        nest = loops(e.axes, update, guards)
        out: list[Stmt] = [Let(acc, Const(INIT[e.op]))] + ([Let(cnt, Const(0.0))] if cnt else []) + (
            [Let(best, Const(float("-inf")))] if e.op == "argmax" else []) + nest
        if e.op == "mean":
            denom = Scalar(cnt) if cnt else Const(float(math.prod(x for _, x in e.axes)))
            return out, Binary("/", Scalar(acc), denom)
        return out, Scalar(acc)

    def guards(self, body: Expr, facts: dict) -> list[Expr]:
        return read_guards(body, self.ranges, facts, self.shapes)


def loops(axes, body: list[Stmt], guards: list[Expr]) -> list[Stmt]:
    """Loops over axes (outermost first) around body, each guard placed in the innermost loop
    whose variable it uses, so the iterations a guard rules out are skipped whole."""
    names = [n for n, _ in axes]
    placed: dict[str | None, list[Expr]] = {}
    for g in guards:
        deep = [n for n in names if n in free_vars(g)]
        placed.setdefault(deep[-1] if deep else None, []).append(g)
    for n, x in reversed(list(axes)):
        body = [Loop(n, x, tuple(_guard(placed.get(n, []), body)))]
    return _guard(placed.get(None, []), body)


def _guard(conds: list[Expr], body: list[Stmt]) -> list[Stmt]:
    """body under the conjunction of conds. A condition that reads memory (a position stored in
    a tensor) goes in an inner guard, evaluated only where the plain ones hold, so its own read
    stays in range."""
    if not conds:
        return body
    reads = [c for c in conds if any(isinstance(x, Load) for x in c.walk())]
    plain = [c for c in conds if c not in reads]
    if reads and plain:
        return _guard(plain, _guard(reads, body))
    cond = conds[0]
    for c in conds[1:]:
        cond = Binary("and", cond, c)
    return [If(cond, tuple(body))]
