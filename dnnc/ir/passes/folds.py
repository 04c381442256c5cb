"""What the GPU's loop passes (shared.py, rfactor.py, thread_tile.py, unroll.py) read and
build: a bound kernel's reduction, its folds, conjunctions of guards, nests of grid loops
and fresh loop names."""
from __future__ import annotations

from ...te.expr import Binary, Const, Expr, Scalar
from .. import If, Let, Loop, Set, Stmt

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


def reduction_chain(red: Loop) -> tuple[list[Loop], list[Expr]]:
    """The loops nested at the top of the reduction, through guards that hold one loop
    (a padded convolution's row guard), and those guards' conditions: all of it is flattened
    into one index, so that neighbouring threads take neighbouring iterations of the
    innermost loop."""
    chain, conds = [red], []
    while len(chain[-1].body) == 1:
        s = chain[-1].body[0]
        if isinstance(s, If) and not s.orelse and len(s.then) == 1 and isinstance(s.then[0], Loop):
            conds.append(s.cond)
            s = s.then[0]
        if not isinstance(s, Loop):
            break
        chain.append(s)
    return chain, conds


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


def decode(flat: Expr, loops) -> dict[str, Expr]:
    """The variables of loops (var, extent), outermost first, at row-major index flat: the
    innermost moves fastest; the outermost is not reduced modulo its extent."""
    out, stride = {}, 1
    for n, (v, ext) in enumerate(reversed(loops)):
        q = Binary("/", flat, Const(stride)) if stride > 1 else flat
        out[v] = q if n == len(loops) - 1 else Binary("%", q, Const(ext))
        stride *= ext
    return out


def fresh(stem: str, used: set[str]) -> str:
    """stem, or stem1, stem2, ...: the first not in used, which it joins."""
    name, k = stem, 0
    while name in used:
        k += 1
        name = f"{stem}{k}"
    used.add(name)
    return name
