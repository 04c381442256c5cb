"""Which reads of an expression may fall outside their tensors, from the ranges of its variables."""
from __future__ import annotations

from . import affine
from .expr import Binary, Const, Expr, Load, Reduce, Select


def read_guards(body: Expr, ranges: dict, facts: dict, shapes: dict) -> list[Expr]:
    """Conditions under which every read in body (outside inner reductions) is in range.

    Only the comparisons that the ranges and facts do not already prove are returned.
    """
    out: list[Expr] = []

    def visit(e, facts):
        if isinstance(e, Reduce):
            return  # an inner reduction guards its own reads
        if isinstance(e, Select):
            visit(e.cond, facts)
            visit(e.a, affine.facts_from(e.cond, ranges, facts))
            visit(e.b, affine.facts_from(e.cond, ranges, facts, negate=True))
            return
        if isinstance(e, Load):
            shape = shapes[e.tensor]
            for k, ix in enumerate(e.index):
                b = affine.bounds(ix, ranges, facts)
                lo, hi = b if b is not None else (-1, shape[k])
                if lo < 0:
                    c = Binary(">=", ix, Const(0))
                    if c not in out:
                        out.append(c)
                if hi > shape[k] - 1:
                    c = Binary("<", ix, Const(shape[k]))
                    if c not in out:
                        out.append(c)
        for c in e.children():
            visit(c, facts)

    visit(body, facts)
    return out
