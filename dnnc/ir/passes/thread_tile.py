"""Register tiles for GPU threads: each thread computes a Ta x Tb block of outputs.

Bound as it is, a convolution's thread computes one output and loads two numbers (an input
and a weight) for every multiply-add: the GPU then waits on memory. Giving a thread Ta filters
and Tb rows (unroll-and-jam of two grid loops into the reduction) keeps Ta * Tb sums in
registers and loads each input once for Ta filters and each weight once for Tb rows: Ta + Tb
loads for Ta * Tb multiply-adds. The copies of a load that no longer depends on the unrolled
index are the same expression, which LLVM's value numbering makes one load.

The pass rewrites a bound kernel of the form
    grid loops; let acc = init; a reduction (loops, guards, acc = acc op e); statements using acc
into
    grid loops (a and b now counting tiles); tile[ai, bj] = init for every ai, bj (unrolled);
    the reduction, whose folds become `tile[ai, bj] = tile[ai, bj] op e` for every ai, bj, under
    the guards that depend on a or b; the statements after it for every ai, bj
with a = ao * Ta + ai and b = bo * Tb + bj. Where a tile size does not divide its extent, the
cells of the last tile past it compute the last element again (a = min(ao * Ta + ai, A - 1),
so every read stays in bounds) and store nothing; the axes chosen are those that share the
most loads, then those that waste the fewest cells.
"""
from __future__ import annotations

import math

from ...te.expr import Binary, Const, Expr, Load, Scalar, Var, free_vars, substitute
from .. import Buffer, If, Kernel, Let, Loop, Program, Set, Stmt, Store, map_exprs, walk
from .folds import all_of, fold_op, fresh, grid_nest, reduction
from .grid import grid_loops

TILE = 4  # outputs along each tiled axis: 16 sums in registers
MIN_THREADS = 32768  # a tiled kernel keeps at least this many threads (a GPU of 132 SMs runs 270,000)


def tile_threads(p: Program) -> Program:
    """Invariant: computes what p computes, each output folding its terms in the same order.
    A bound kernel whose single reduction folds registers with + (or max, min) gets
    a TILE x TILE (or 2 x 2) register tile over the two grid axes whose unrolling shares the
    most loads, when that leaves MIN_THREADS threads; its tiles are `local` buffers."""
    buffers = list(p.buffers)
    kernels = []
    for k in p.kernels:
        done = _tile(k)
        if done is None:
            kernels.append(k)
        else:
            kernel, tiles = done
            kernels.append(kernel)
            buffers += tiles
    return Program(p.name, tuple(buffers), tuple(kernels), p.schedule)


def _tile(k: Kernel):
    loops, body = grid_loops(k.body)
    if len(loops) < 2:
        return None
    form = reduction(body)
    if form is None:
        return None
    lets, red, rest = form
    accs = {lt.name for lt in lets}
    folds = [s for s in walk((red,)) if isinstance(s, Set)]
    if not folds or any(s.name not in accs or not fold_op(s) for s in folds):
        return None
    if any(isinstance(s, Let) for s in walk((red,))) or any(
            isinstance(x, Scalar) and x.name in accs for s in folds for x in s.value.b.walk()):
        return None
    if any(isinstance(s, If) and s.orelse for s in walk((red,))):
        return None
    if any(isinstance(s, Store) for s in walk((red,))):
        return None
    choice = _choose(loops, folds)
    if choice is None:
        return None
    (a, ta), (b, tb) = choice
    ext = {lp.var: lp.extent for lp in loops}
    names = {s.var for s in walk(k.body) if isinstance(s, Loop)} | {a, b}
    ao, ai, bo, bi = (fresh(n, names) for n in (a + "o", a + "i", b + "o", b + "i"))
    at, ragged = {}, []
    for v, t, o, i in ((a, ta, ao, ai), (b, tb, bo, bi)):
        at[v] = Binary("+", Binary("*", Var(o), Const(t)), Var(i))
        if ext[v] % t:  # a ragged last tile: the cells past the edge recompute the last element
            ragged.append(Binary("<", at[v], Const(ext[v])))  # and do not store it
            at[v] = Binary("min", at[v], Const(ext[v] - 1))
    valid = all_of(ragged)
    tiles = {acc: Buffer(f"{k.name}.{acc}.tile", (ta, tb), "local") for acc in sorted(accs)}
    cell = (Var(ai), Var(bi))

    def each(stmts):  # stmts for every cell of the tile, a and b substituted
        return (Loop(ai, ta, (Loop(bi, tb, tuple(stmts), "unroll"),), "unroll"),)

    def sub(e: Expr) -> Expr:
        return substitute(e, lambda x: at.get(x.name) if isinstance(x, Var) else
                          Load(tiles[x.name].name, cell) if isinstance(x, Scalar) and x.name in tiles else None)

    inits = [Store(tiles[lt.name].name, cell, sub(lt.value)) for lt in lets]
    jammed = _jam(red, {a, b}, (), each, sub, tiles, cell)
    after = map_exprs(rest, sub)
    after = each(after if valid is None else [If(valid, tuple(after))])
    tiled = {a: (ao, ta), b: (bo, tb)}
    outer = [(tiled[lp.var][0], -(-lp.extent // tiled[lp.var][1])) if lp.var in tiled else (lp.var, lp.extent)
             for lp in loops]
    inner = tuple(each(inits)) + (jammed,) + tuple(after)
    return Kernel(k.name, grid_nest(outer, inner), k.layer), list(tiles.values())


def _choose(loops: list[Loop], folds: list[Set]):
    """((a, Ta), (b, Tb)): a shares the most loads across its copies, b the most of the rest;
    the innermost grid axis (neighbouring threads, coalesced reads) is taken last."""
    loads = [x for s in folds for x in s.value.b.walk() if isinstance(x, Load)]
    if len(loads) < 2:
        return None
    uses = {lp.var: {i for i, ld in enumerate(loads) if lp.var in set().union(*map(free_vars, ld.index))}
            for lp in loops}
    points = math.prod(lp.extent for lp in loops)
    ext = {lp.var: lp.extent for lp in loops}
    order = {lp.var: n for n, lp in enumerate(loops)}
    innermost = loops[-1].var
    for size in (TILE, 2):
        if points // (size * size) < MIN_THREADS:
            continue
        fits = [lp.var for lp in loops if lp.extent >= size]

        def rank(v, among):  # loads shared, then the least padding of a ragged last tile
            waste = -(-ext[v] // size) * size - ext[v]
            return (len(among - uses[v]), -waste / ext[v], v != innermost, -order[v])

        cands = [v for v in fits if len(uses[v]) < len(loads)]
        if not cands:
            continue
        a = max(cands, key=lambda v: rank(v, set(range(len(loads)))))
        left = uses[a]  # the loads a's copies do not share
        rest = [v for v in fits if v != a and len(left - uses[v]) > 0]
        if not rest:
            continue
        b = max(rest, key=lambda v: rank(v, left))
        return (a, size), (b, size)
    return None


def _jam(s: Stmt, tiled: set[str], conds: tuple, each, sub, tiles, cell) -> Stmt | tuple:
    """The reduction with each fold made one per tile cell, under `conds`, the guards around
    it that depend on a tiled axis (which are evaluated per cell)."""
    if isinstance(s, Loop):
        body = []
        for c in s.body:
            out = _jam(c, tiled, conds, each, sub, tiles, cell)
            body += list(out) if isinstance(out, tuple) else [out]
        return Loop(s.var, s.extent, tuple(body), s.kind)
    if isinstance(s, If):
        if free_vars(s.cond) & tiled:
            inner = conds + (s.cond,)
            out = []
            for c in s.then:
                r = _jam(c, tiled, inner, each, sub, tiles, cell)
                out += list(r) if isinstance(r, tuple) else [r]
            return tuple(out)
        then = []
        for c in s.then:
            r = _jam(c, tiled, conds, each, sub, tiles, cell)
            then += list(r) if isinstance(r, tuple) else [r]
        return If(s.cond, tuple(then))
    assert isinstance(s, Set)
    fold = Store(tiles[s.name].name, cell, sub(s.value))
    if conds:
        fold = If(sub(all_of(conds)), (fold,))
    return each([fold])
