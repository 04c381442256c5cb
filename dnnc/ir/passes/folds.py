"""What the GPU's reduction passes (rfactor.py, thread_tile.py) read and build: a bound
kernel's reduction, its folds, conjunctions of guards and nests of grid loops."""
from __future__ import annotations

from ...te.expr import Binary, Expr, Scalar
from .. import Let, Loop, Set, Stmt

IDENTITY = {"+": 0.0, "max": float("-inf"), "min": float("inf")}  # the folds, by their operator


def reduction(body: tuple[Stmt, ...]):
    """(lets, loop, rest) for a body of registers declared, then one loop, then the
    statements after it; None for any other body."""
    n = 0
    while n < len(body) and isinstance(body[n], Let):
        n += 1
    if n == 0 or n == len(body) or not isinstance(body[n], Loop):
        return None
    return list(body[:n]), body[n], body[n + 1:]


def fold_op(s: Set) -> str | None:
    """The operator of `acc = acc op e` (+, max, min), or None for any other update."""
    v = s.value
    if isinstance(v, Binary) and v.op in IDENTITY and v.a == Scalar(s.name):
        return v.op
    return None


def all_of(conds) -> Expr | None:
    """The conjunction of conds, in order (None for none)."""
    out = None
    for c in conds:
        out = c if out is None else Binary("and", out, c)
    return out


def grid_nest(loops, body) -> tuple[Stmt, ...]:
    """body inside grid loops of these (var, extent), the first outermost."""
    for var, extent in reversed(list(loops)):
        body = (Loop(var, extent, tuple(body), "grid"),)
    return tuple(body)
