"""Tensor-expression statements: `T[i, j, ...] = value` over a domain, and what works on
statements alone (index folding, operation counts). Whether their reads stay in range
is te.bounds's question.

Statements come from instantiating op definitions (front.instantiate), from autodiff and from
the TE rewrites; lowering turns them into loop nests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import affine
from ..base.errors import Loc
from .expr import ARITH, COMPARE, Binary, Expr, Load, Reduce, Select, Unary, Var, show, substitute

UNARY_FUNCS = ("exp", "log", "sqrt", "tanh", "sigmoid", "abs")  # the unary functions of index notation
RNG_SEED = "rng.seed"  # a one-element buffer the training loop sets before every step


@dataclass(frozen=True)
class TStmt:
    """tensor[axes] = value, for every point of the domain given by axes ((name, extent), ...).

    Statements made by autodiff may also write a computed element (`index`, a scatter: a
    write that falls outside the tensor is dropped, like a read outside it) and accumulate
    (`+=`) instead of assigning.
    """

    tensor: str
    axes: tuple[tuple[str, int], ...]
    value: Expr
    loc: Loc | None = None
    index: tuple[Expr, ...] | None = None
    accumulate: bool = False

    @property
    def target(self) -> tuple[Expr, ...]:
        return self.index if self.index is not None else tuple(Var(n) for n, _ in self.axes)

    def show(self) -> str:
        idx = ", ".join(show(i) for i in self.target)
        dom = ", ".join(f"{n} < {x}" for n, x in self.axes)
        head = f"{self.tensor}[{idx}]"
        op = "+=" if self.accumulate else "="
        return f"{head} {op} {show(self.value)}" + (f"    for {dom}" if dom else "")


def simplify_indices(stmt: TStmt) -> TStmt:
    """Fold index atoms that the ranges fix to one value (f / 6 is 0 for f < 6)."""
    ranges = {n: (0, x - 1) for n, x in stmt.axes}
    for x in stmt.value.walk():
        if isinstance(x, Reduce):
            ranges.update({n: (0, k - 1) for n, k in x.axes})

    def fix(e):
        if isinstance(e, Load):
            return Load(e.tensor, tuple(affine.simplify_in(i, ranges) for i in e.index), e.loc)
        return None

    index = None if stmt.index is None else tuple(affine.simplify_in(i, ranges) for i in stmt.index)
    return TStmt(stmt.tensor, stmt.axes, substitute(stmt.value, fix), stmt.loc, index, stmt.accumulate)


def count_flops(stmt: TStmt) -> int:
    """Arithmetic operations over the statement's domain; a reduction step counts one more."""

    def ops(e: Expr) -> int:
        if isinstance(e, Reduce):
            return math.prod(x for _, x in e.axes) * (ops(e.body) + 1)
        if isinstance(e, Select):
            return ops(e.cond) + max(ops(e.a), ops(e.b))
        own = 1 if (isinstance(e, Binary) and e.op in ARITH + COMPARE) or (
            isinstance(e, Unary) and e.op != "neg") else 0
        if isinstance(e, Load):
            return 0
        return own + sum(ops(c) for c in e.children())

    return math.prod(x for _, x in stmt.axes) * ops(stmt.value)
