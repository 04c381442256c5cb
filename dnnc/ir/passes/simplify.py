"""Guard folding: drop conditions the loop ranges already prove, and code they prove dead."""
from __future__ import annotations

from ...te import affine
from ...te.expr import Binary, Expr
from .. import If, Loop, Program, Stmt


def fold_guards(p: Program) -> Program:
    """Invariant: computes exactly what p computes.

    A comparison in a guard that holds over every iteration is removed; a guard that never
    holds removes its body. Nothing else changes.
    """
    return p.replace_kernels(k.__class__(k.name, _block(k.body, {}), k.layer) for k in p.kernels)


def _block(stmts, ranges) -> tuple[Stmt, ...]:
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Loop):
            inner = dict(ranges)
            inner[s.var] = (0, s.extent - 1)
            body = _block(s.body, inner)
            if body:
                out.append(Loop(s.var, s.extent, body, s.kind))
        elif isinstance(s, If):
            cond = _fold(s.cond, ranges)
            then, orelse = _block(s.then, ranges), _block(s.orelse, ranges)
            if cond is True:
                out.extend(then)
            elif cond is False:
                out.extend(orelse)
            else:
                out.append(If(cond, then, orelse))
        else:
            out.append(s)
    return tuple(out)


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
