"""Register-tiled loop nests: a statement lowered as its schedule's Tile step says.

A Tile is a composition of schedule primitives (`Tile.primitives()`: splits, vectorize,
unroll, reorder, accumulate, block, parallel; see schedule/primitives.py). `lower_tile`
is the one generator that realizes it: `_Nest` reads the composition once (fresh names
for the split axes, their substitutions, the outer loops in the reorder's order, ranges,
edge masks, loop kinds), and the body is built for the two places the lanes can run:

- along an output axis: the register tile `T.acc[U, W*K]` holds U rows of K vectors; pool
  windows (a max over a fused sum) and a max's argmax partner are kept in the same tile;
- along a reduction axis: the lanes sum different terms, each row's lanes are combined
  before the store, and the reduction may be taken in cache blocks.
"""
from __future__ import annotations

from ..base.errors import DnncError
from ..ir import Buffer, If, Let, Loop, Set, Stmt, Store
from ..schedule.analysis import single_reduce, window_reduce
from ..schedule.primitives import Accumulate, Block, Parallel, Reorder, Split, Unroll, Vectorize, parallel
from ..te import affine
from ..te.expr import Binary, Const, Expr, Load, Reduce, Scalar, Select, Var, free_vars, substitute, subst_vars
from ..te.stmt import TStmt
from .nest import INIT, _Ctx, _guard, lower_stmt, loops
from ..te.names import argmax_name

OPS = {"sum": "+", "max": "max", "min": "min"}


def _argmax_partner(st: TStmt, rest: list[TStmt]) -> TStmt | None:
    """The companion `T.arg = argmax(W) e` right after `T = max(W) e` (autodiff's normalize
    adds it), to be computed in T's nest."""
    v = st.value
    if not rest or not isinstance(v, Reduce) or v.op != "max" or st.accumulate or st.index is not None:
        return None
    other = rest[0]
    same = other.tensor == argmax_name(st.tensor) and other.axes == st.axes and other.index is None
    return other if same and other.value == Reduce("argmax", v.axes, v.body, v.loc) else None


def _fresh_name(base: str, taken: set[str]) -> str:
    name = base
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _ceil(n: int, d: int) -> int:
    return -(-n // d)


class _Nest:
    """The shared set-up of a Tile's nest, read once from its primitive composition.

    Each split's loop names are made fresh against the statement's names (`names` maps a
    primitive's name to the nest's); `sub` gives every split axis in the new variables
    (a split of a split's inner axis, the lanes of K vectors, composes into it); `outer`
    lists the loops outside the register tile, the statement's other axes first (or where
    the reorder's `...` puts them) and then the reorder's (an axis of extent one gets no
    loop); `tile_loops` are the register tile's own loops, outermost first, with the kinds
    vectorize and unroll chose; `edge` masks the ragged ends of split output axes.
    """

    def __init__(self, st: TStmt, t, across: bool):
        self.st, self.t, self.across = st, t, across
        self.axes = dict(st.axes)
        self.red = single_reduce(st) if across else None
        self.raxes = dict(self.red.axes) if self.red is not None else {}
        self.taken = set(self.axes) | {n for x in st.value.walk() if isinstance(x, Reduce) for n, _ in x.axes}
        self.names: dict[str, str] = {}
        self.extents = dict(self.axes) | self.raxes
        self.raw: dict[str, Expr] = {}  # split statement axes, unsimplified
        self.parts: dict[str, Expr] = {}  # a split axis that was split again, in the new variables
        self.kinds: dict[str, str] = {}
        self.reorder: tuple[str, ...] = ()
        self.block: tuple[str, str, str, int] | None = None  # axis, block loop, inner loop, size
        self.buffer, self.tile_axes, self.parallel = "", (), False
        for p in t.primitives():
            self.read(p)
        self.sub = {n: affine.simplify(e) for n, e in self.raw.items()}
        v, u = t.vector, t.unroll
        lanes = self.names[v + "o"]
        others = [(n, x) for n, x in st.axes if n not in (u, v) and x > 1]
        self.sub.update({n: Const(0) for n, x in st.axes if n not in (u, v) and x == 1})  # no loop of one
        self.outer = []
        for n in self.reorder if "..." in self.reorder else ("...",) + self.reorder:
            if n == "...":
                self.outer += others
            elif n not in self.tile_axes and not (across and n == lanes):
                self.outer.append((n, self.extents[n]))
        if self.block:  # the block loop runs just inside the outermost output loop
            self.outer.insert(1 if self.outer else 0, (self.block[1], self.extents[self.block[1]]))
        self.tile_loops = [(n, self.extents[n], self.kinds.get(n, "serial")) for n in self.tile_axes]
        self.ranges = {n: (0, x - 1) for n, x in self.outer}
        for n, x, _ in self.tile_loops:
            self.ranges[n] = (0, x - 1)
        self.edge: list[Expr] = []
        if u and self.axes[u] % t.factor:
            self.edge.append(Binary("<", self.sub[u], Const(self.axes[u])))
        if not across and self.axes[v] % (t.width * t.vectors):
            self.edge.append(Binary("<", self.sub[v], Const(self.axes[v])))
        self.row: Expr = Var(self.names[u + "i"]) if u else Const(0)
        first_inner = v + "i" if t.vectors == 1 else v + "l"  # the lane split's inner axis, as primitives() names it
        self.lane = affine.simplify(self.parts.get(first_inner, Var(self.names[first_inner])))
        self.cell = (self.row, self.lane)
        self.lane_vars = {n for n, _, _ in self.tile_loops}

    def read(self, p) -> None:
        """Take one primitive of the composition into the set-up."""
        if isinstance(p, Split):
            self.split(p.axis, p.factor, *p.names)
        elif isinstance(p, Vectorize):
            self.kinds[self.names[p.axis]] = "vector"
        elif isinstance(p, Unroll):
            self.kinds[self.names[p.axis]] = "unroll"
        elif isinstance(p, Reorder):
            self.reorder = tuple(self.names.get(a, a) if a != "..." else a for a in p.axes)
        elif isinstance(p, Accumulate):
            self.buffer, self.tile_axes = p.buffer, tuple(self.names[a] for a in p.axes)
        elif isinstance(p, Block):
            self.split(p.axis, p.size, *p.names)
            self.block = (p.axis, self.names[p.names[0]], self.names[p.names[1]], p.size)
        elif isinstance(p, Parallel):
            self.parallel = True

    def split(self, axis: str, factor: int, outer: str, inner: str) -> None:
        """axis -> outer * factor + inner, in the statement's axis or, for an axis an earlier
        split made, inside the expressions that use it."""
        made = self.names.get(axis)
        o, i = _fresh_name(outer, self.taken), _fresh_name(inner, self.taken)
        self.names[outer], self.names[inner] = o, i
        expr = Binary("+", Binary("*", Var(o), Const(factor)), Var(i))
        self.extents[o] = _ceil(self.extents[made or axis], factor)
        self.extents[i] = factor
        if made is None:
            self.raw[axis] = expr
            return
        self.parts[axis] = expr
        for n, e in self.raw.items():
            self.raw[n] = subst_vars(e, {made: expr})

    def tile(self, body: list[Stmt]) -> list[Stmt]:
        """body inside the register tile's loops."""
        for n, x, kind in reversed(self.tile_loops):
            body = [Loop(n, x, tuple(body), kind)]
        return body

    def outer_loops(self, body: list[Stmt]) -> list[Stmt]:
        """body inside the outer loops, the outermost on the thread pool if parallel."""
        for n, x in reversed(self.outer):
            body = [Loop(n, x, tuple(body))]
        if self.parallel and self.outer:
            body = parallel(body, self.outer[0][0])
        return body


def lower_tile(st: TStmt, shapes: dict, t, partner: TStmt | None = None) -> tuple[list[Stmt], list[Buffer]]:
    """The loop nest of a Tile step, built from its primitive composition.

    Invariant: computes what lower_stmt(st) (and the partner's) computes, up to the order of
    a sum's terms. The lanes run along an output axis of st, or else along an axis of its
    one reduction.
    """
    across = t.vector not in dict(st.axes)
    if across:
        _check_across(st, t)
    else:
        _check_outputs(st, t)
    nest = _Nest(st, t, across)
    if across:
        return _across_body(nest, shapes)
    return _outputs_body(nest, shapes, partner)


def _check_outputs(st: TStmt, t) -> None:
    axes = dict(st.axes)
    if t.vector not in axes or (t.unroll is not None and (t.unroll not in axes or t.unroll == t.vector)):
        raise DnncError(f"schedule step {t} names an axis that {st.tensor} does not have "
                        f"(axes: {', '.join(axes)})")
    if t.block:
        raise DnncError(f"schedule step {t}: block applies only when the lanes run along a reduction axis "
                        f"({t.vector} is an output axis of {st.tensor})")


def _check_across(st: TStmt, t) -> None:
    r = single_reduce(st)
    axes = dict(st.axes)
    raxes = dict(r.axes) if r is not None else {}
    if r is None or r.op not in OPS or t.vector not in raxes or (t.unroll is not None and t.unroll not in axes):
        raise DnncError(f"schedule step {t} names an axis that {st.tensor} does not have (axes: "
                        f"{', '.join(axes)}; reduction axes: {', '.join(raxes) or 'none'})")
    if t.vectors > 1:
        raise DnncError(f"schedule step {t}: lanes along a reduction axis take one vector per row")
    if t.block and (t.block[0] not in raxes or t.block[0] == t.vector):
        raise DnncError(f"schedule step {t}: block names {t.block[0]}, which is not a reduction axis of "
                        f"{st.tensor} other than the lanes' ({', '.join(n for n in raxes if n != t.vector)})")
    if t.block and (st.value is not r or st.accumulate):
        raise DnncError(f"schedule step {t}: only a statement that is one sum can take its reduction in blocks")


def _outputs_body(nest: _Nest, shapes: dict, partner: TStmt | None) -> tuple[list[Stmt], list[Buffer]]:
    """Lanes along an output axis: the reduction, if any, runs outside the register tile
    T.acc[U, W*K] and the result is stored once, lanes and rows past the end masked off. A
    pool window over a fused sum keeps the window's running result in a second tile."""
    st, t = nest.st, nest.t
    value = affine.fold_panels(affine.canon_loads(subst_vars(st.value, nest.sub)), nest.ranges)
    target = tuple(affine.simplify(subst_vars(ix, nest.sub)) for ix in st.target)
    if st.accumulate:
        value = Binary("+", Load(st.tensor, target), value)
    tiles = _Tiles(nest, shapes)
    whole = TStmt(st.tensor, st.axes, value)
    win = window_reduce(whole)
    r = win[1] if win else single_reduce(whole)
    if r is None:
        pre, val = _Ctx(tiles.shapes, nest.ranges).value(value, {})
        return nest.outer_loops(nest.tile(_guard(nest.edge, pre + [Store(st.tensor, target, val)]))), tiles.made
    top = win[0] if win else r  # the reduction the statement's expression holds
    for red in (top, r):
        for n, x in red.axes:
            nest.ranges[n] = (0, x - 1)
    ctx = _Ctx(tiles.shapes, nest.ranges)
    # an argmax, or a max computed with its argmax companion, keeps the best value and where
    ranked = top.op == "argmax" or partner is not None
    acc = tiles.local(nest.buffer)
    if win:  # acc: the inner sum at one window position; best: the window's running result
        best, arg = tiles.local(f"{acc}.win"), (tiles.local(f"{acc}.arg") if ranked else None)
    elif top.op == "argmax":
        best, arg = tiles.local(f"{acc}.best"), acc
    else:
        best, arg = acc, (tiles.local(f"{acc}.arg") if ranked else None)
    ranking = (top, arg) if ranked else None
    pre, term = ctx.value(r.body, {})
    body = _update_loops(nest, r, acc, term, pre, ctx.guards(r.body, {}), ranking)
    if win:  # at each window position: the inner sum from zero, then the window's update
        at_acc = substitute(top.body, lambda x: Load(acc, nest.cell) if x == r else None)
        pre_w, term_w = ctx.value(at_acc, {})
        update = _update_loops(nest, top, best, term_w, pre_w, ctx.guards(top.body, {}), ranking)
        body = _wrap_window(top.axes, nest.tile([Store(acc, nest.cell, Const(0.0))]) + body, update)
    init = [Store(best, nest.cell, Const(float("-inf") if ranked else INIT[top.op]))]
    if ranked:
        init.append(Store(arg, nest.cell, Const(0.0)))
    result = Load(arg, nest.cell) if top.op == "argmax" else Load(best, nest.cell)
    pre2, val2 = _Ctx(tiles.shapes, nest.ranges).value(substitute(value, lambda x: result if x == top else None), {})
    stores = pre2 + [Store(st.tensor, target, val2)]
    if partner is not None:
        stores.append(Store(partner.tensor, target, Load(arg, nest.cell)))
    return nest.outer_loops(nest.tile(init) + body + nest.tile(_guard(nest.edge, stores))), tiles.made


class _Tiles:
    """The local register tiles a nest declares, each [U, W*K], and the shapes it sees."""

    def __init__(self, nest: _Nest, shapes: dict):
        self.shape = (nest.t.factor if nest.t.unroll else 1, nest.t.width * nest.t.vectors)
        self.shapes = dict(shapes)
        self.made: list[Buffer] = []

    def local(self, name: str) -> str:
        self.shapes[name] = self.shape
        self.made.append(Buffer(name, self.shape, "local"))
        return name


def _update_loops(nest: _Nest, red: Reduce, into: str, term: Expr, pre: list[Stmt], guards: list[Expr],
                  ranking: tuple[Reduce, str] | None) -> list[Stmt]:
    """Loops over red's axes updating tile `into` by one term; guards outside the lanes skip
    whole iterations, those that depend on a lane mask the update. With `ranking` (the
    ranked reduction, the tile of positions) the first maximum and its position win."""
    cell = nest.cell
    inner_g = [g for g in guards if free_vars(g) & nest.lane_vars]
    if ranking is not None and red is ranking[0]:
        arg = ranking[1]
        flat: Expr = Const(0)
        for n, x in red.axes:
            flat = Binary("+", Binary("*", flat, Const(x)), Var(n))
        wins = Binary(">", term, Load(into, cell))
        update = pre + [Store(arg, cell, Select(wins, affine.simplify(flat), Load(arg, cell))),
                        Store(into, cell, Binary("max", Load(into, cell), term))]
    else:
        update = pre + [Store(into, cell, Binary(OPS[red.op], Load(into, cell), term))]
    return loops(red.axes, nest.tile(_guard(inner_g, update)), [g for g in guards if g not in inner_g])


def _wrap_window(axes, before: list[Stmt], update: list[Stmt]) -> list[Stmt]:
    """Loops over a pool window's axes around the inner reduction and the window's update.

    `update` comes from `loops(axes, ...)`, so its outermost statements are the window loops
    around the update alone; the inner reduction is spliced in at the innermost window loop.
    """
    return _splice(update, before, len(axes), 0)


def _splice(stmts: list[Stmt], before: list[Stmt], depth: int, at: int) -> list[Stmt]:
    if at == depth:
        return before + stmts
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Loop):
            out.append(Loop(s.var, s.extent, tuple(_splice(list(s.body), before, depth, at + 1)), s.kind))
        elif isinstance(s, If):
            out.append(If(s.cond, tuple(_splice(list(s.then), before, depth, at)), s.orelse))
        else:
            out.append(s)
    return out


def _across_body(nest: _Nest, shapes: dict) -> tuple[list[Stmt], list[Buffer]]:
    """Lanes along a reduction axis w: the tile T.acc[U, W] sums different terms in each
    lane, and after the reduction each row's lanes are combined and stored. For a weight
    gradient (`sum(n, i, j) dy[.., i, j] * x[.., i + r, j + s]`) the lanes run along j, where
    both reads are contiguous, instead of along a 5-wide kernel axis. With a block, the
    output is zeroed first and each block adds its part."""
    st, t, r, sub = nest.st, nest.t, nest.red, nest.sub
    w, W = t.vector, t.width
    rename = {w: nest.names[w + "o"]}
    if nest.block:
        rename[nest.block[0]] = nest.block[2]
    red = [(rename[n], nest.extents[rename[n]]) if n in rename else (n, x) for n, x in r.axes]
    for n, x in red:
        nest.ranges[n] = (0, x - 1)
    acc = nest.buffer
    sh = dict(shapes)
    sh[acc] = (t.factor if t.unroll else 1, W)
    cell = (nest.row, Var(nest.names[w + "i"]))
    ctx = _Ctx(sh, nest.ranges)
    body_e = affine.canon_loads(subst_vars(r.body, sub))
    pre, val = ctx.value(body_e, {})
    guards = ctx.guards(body_e, {})
    if nest.raxes[w] % W:  # lanes past the reduction's end contribute nothing: a mask, like padding
        guards.append(Binary("<", sub[w], Const(nest.raxes[w])))
    if nest.block and nest.raxes[nest.block[0]] % nest.block[3]:  # the last block is short
        guards.append(Binary("<", sub[nest.block[0]], Const(nest.raxes[nest.block[0]])))
    inner_g = [g for g in guards if free_vars(g) & nest.lane_vars]
    op = OPS[r.op]
    update = pre + [Store(acc, cell, Binary(op, Load(acc, cell), val))]
    body = loops(red, nest.tile(_guard(inner_g, update)), [g for g in guards if g not in inner_g])
    prologue = nest.tile([Store(acc, cell, Const(INIT[r.op]))])
    # combine each row's lanes, then the statement's own expression around the reduction
    total = f"{acc}.lanes"
    wi = nest.names[w + "i"]
    combine = [Let(total, Const(INIT[r.op])),
               Loop(wi, W, (Set(total, Binary(op, Scalar(total), Load(acc, cell))),), "unroll")]
    value = affine.canon_loads(subst_vars(st.value, {k: e for k, e in sub.items() if k != w}))
    target = tuple(sub.get(n, Var(n)) for n, _ in st.axes)
    if st.accumulate or nest.block:  # with blocks, each adds its part to the zeroed output
        value = Binary("+", Load(st.tensor, target), value)
    value = substitute(value, lambda x: Scalar(total) if isinstance(x, Reduce) else None)
    pre2, val2 = _Ctx(sh, nest.ranges).value(value, {})
    epilogue = combine + pre2 + [Store(st.tensor, target, val2)]
    if t.unroll:
        epilogue = [Loop(nest.names[t.unroll + "i"], t.factor, tuple(_guard(nest.edge, epilogue)), "unroll")]
    out = nest.outer_loops(prologue + body + epilogue)
    if nest.block:
        out = lower_stmt(TStmt(st.tensor, st.axes, Const(0.0), st.loc), shapes) + out
    return out, [Buffer(acc, sh[acc], "local")]
