"""Index-set splitting: peel the edges off a loop whose vector guards hold in its middle.

A padded convolution tiled along a row masks every vector load with `0 <= j + s - 1 < W`,
though only the first and last vectors of the row ever need it. Splitting the loop over
the row's vectors into [0, a), [a, b) and [b, N), with [a, b) the iterations where every such
guard provably holds, lets fold_guards delete the guards of the middle copy: no mask
arithmetic, and identical reads under different masks become one read.
"""
from __future__ import annotations

from ...te import affine
from ...te.expr import Binary, Const, Expr, Var, free_vars, subst_vars
from .. import If, Let, Loop, Program, Set, Stmt, Store, rewrite

MAX_SPLIT = 512  # iterations examined one by one; longer loops are left alone


def split_edges(p: Program) -> Program:
    """Invariant: computes exactly what p computes (the same iterations, in the same order).

    A serial loop, entered at least MIN_ENTRIES times, whose body holds a guard inside a
    vector loop that mentions the loop's variable is split into up to three consecutive loops;
    the middle one runs the iterations for which every such guard is true over all the inner
    loops' ranges.
    """
    return p.replace_kernels(k.__class__(k.name, rewrite(k.body, _loop), k.layer) for k in p.kernels)


MIN_ENTRIES = 64  # a loop entered fewer times than this saves too little for its extra code


def _loop(loop: Loop, ranges, entries: int) -> list[Stmt]:
    """`entries`: how many times the loop runs (the product of the loops around it)."""
    worth = loop.kind == "serial" and entries >= MIN_ENTRIES
    return _split(loop, ranges) if worth else [loop]


def _masks(stmts, ranges, in_vector: bool, var: str):
    """(condition, ranges of the loops around it) for each guard under a vector loop that uses var."""
    for s in stmts:
        if isinstance(s, Loop):
            inner = dict(ranges)
            inner[s.var] = (0, s.extent - 1)
            yield from _masks(s.body, inner, in_vector or s.kind == "vector", var)
        elif isinstance(s, If):
            if in_vector and var in free_vars(s.cond):
                yield s.cond, ranges
            yield from _masks(s.then, ranges, in_vector, var)
            yield from _masks(s.orelse, ranges, in_vector, var)


def _holds(c: Expr, ranges) -> bool:
    if isinstance(c, Binary) and c.op == "and":
        return _holds(c.a, ranges) and _holds(c.b, ranges)
    if isinstance(c, Binary) and c.op in ("<", "<=", ">", ">=") and affine.constant(c.b) is not None:
        r = affine.bounds(c.a, ranges)
        k = affine.constant(c.b)
        if r is None:
            return False
        lo, hi = r
        return {"<": hi < k, "<=": hi <= k, ">": lo > k, ">=": lo >= k}[c.op]
    return False


def _split(loop: Loop, ranges) -> list[Stmt]:
    if loop.extent < 3 or loop.extent > MAX_SPLIT:
        return [loop]
    guards = list(_masks(loop.body, {**ranges, loop.var: (0, loop.extent - 1)}, False, loop.var))
    if not guards:
        return [loop]
    good = [all(_holds(c, {**r, loop.var: (x, x)}) for c, r in guards) for x in range(loop.extent)]
    best, run = (0, 0), None
    for x, ok in enumerate(good + [False]):
        if ok and run is None:
            run = x
        elif not ok and run is not None:
            if x - run > best[1] - best[0]:
                best = (run, x)
            run = None
    a, b = best
    if b - a < 1 or (a == 0 and b == loop.extent):
        return [loop]
    out = []
    for lo, hi in ((0, a), (a, b), (b, loop.extent)):
        if hi > lo:
            body = loop.body if lo == 0 else _shift(loop.body, loop.var, lo)
            out.append(Loop(loop.var, hi - lo, body, loop.kind))
    return out


def _shift(stmts, var: str, by: int) -> tuple[Stmt, ...]:
    """stmts with var replaced by var + by (canonical index forms kept)."""
    m = {var: Binary("+", Var(var), Const(by))}

    def e(x: Expr) -> Expr:
        return affine.simplify(subst_vars(x, m))

    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Loop):
            out.append(s if s.var == var else Loop(s.var, s.extent, _shift(s.body, var, by), s.kind))
        elif isinstance(s, If):
            out.append(If(_canon(subst_vars(s.cond, m)), _shift(s.then, var, by), _shift(s.orelse, var, by)))
        elif isinstance(s, Store):
            out.append(Store(s.buffer, tuple(e(i) for i in s.index), _canon(subst_vars(s.value, m))))
        elif isinstance(s, (Let, Set)):
            out.append(type(s)(s.name, _canon(subst_vars(s.value, m))))
        else:
            raise TypeError(s)
    return tuple(out)


def _canon(x: Expr) -> Expr:
    """x with canonical index forms: both sides of a comparison, the reads of anything else."""
    if isinstance(x, Binary) and x.op in ("<", "<=", ">", ">=", "==", "!="):
        return Binary(x.op, affine.simplify(x.a), affine.simplify(x.b))
    if isinstance(x, Binary) and x.op in ("and", "or"):
        return Binary(x.op, _canon(x.a), _canon(x.b))
    return affine.canon_loads(x)

