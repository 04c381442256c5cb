"""Guard folding: drop conditions the loop ranges already prove, and code they prove dead."""
from __future__ import annotations

from ...te import affine
from ...te.expr import Binary, Expr
from .. import If, Loop, Program, Stmt, rewrite


def fold_guards(p: Program) -> Program:
    """Invariant: computes exactly what p computes.

    A comparison in a guard that holds over every iteration is removed; a guard that never
    holds removes its body. Nothing else changes.
    """
    return p.replace_kernels(k.__class__(k.name, rewrite(k.body, _loop, _guard), k.layer) for k in p.kernels)


def _loop(loop: Loop, ranges, entries) -> list[Stmt]:
    return [loop] if loop.body else []  # every statement of its body was dead


def _guard(s: If, ranges) -> list[Stmt]:
    cond = _fold(s.cond, ranges)
    if cond is True:
        return list(s.then)
    if cond is False:
        return list(s.orelse)
    return [If(cond, s.then, s.orelse)]


def _fold(c: Expr, ranges):
    """True, False, or the condition with its provable parts removed."""
    if isinstance(c, Binary) and c.op == "and":
        a, b = _fold(c.a, ranges), _fold(c.b, ranges)
        if a is False or b is False:
            return False
        if a is True:
            return b
        if b is True:
            return a
        return Binary("and", a, b)
    if isinstance(c, Binary) and c.op in ("<", "<=", ">", ">=") and affine.constant(c.b) is not None:
        r = affine.bounds(c.a, ranges)
        k = affine.constant(c.b)
        if r is not None:
            lo, hi = r
            always = {"<": hi < k, "<=": hi <= k, ">": lo > k, ">=": lo >= k}[c.op]
            never = {"<": lo >= k, "<=": lo > k, ">": hi <= k, ">=": hi < k}[c.op]
            if always:
                return True
            if never:
                return False
    return c
