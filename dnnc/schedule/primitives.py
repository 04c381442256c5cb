"""Schedule primitives: small, orthogonal, replayable transformations of a loop nest.

Each primitive is a frozen record (printable, comparable, usable in a cache key) and, where
it acts on loop IR, a pure function from a list of statements to a new one, with its
invariant in its docstring:

    Split(axis, factor)   axis -> outer * factor + inner, the ragged last block masked
    Reorder(axes)         the named loops innermost, in this order (`...`: the others, there)
    Vectorize(axis)       the loop's iterations run as SIMD lanes
    Unroll(axis)          the loop is unrolled
    Parallel(axis)        the loop's iterations run on the thread pool
    Accumulate(...)       a reduction kept in a local register tile and stored once
    Block(axis, size)     a reduction split into cache blocks, the block loop hoisted

Two more live where they act on tensor expressions: the pack primitive is the `Pack` step
(schedule/steps.py, applied by `apply_packs`), and the algorithm choice is `Algorithm`
(te/conv.py). A `Tile` step is a composition of these (`Tile.primitives()`), realized by the
one nest generator in lower/tile.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..base.errors import DnncError
from ..ir import Buffer, If, Let, Loop, Set, Stmt, Store, walk
from ..te import affine
from ..te.conv import Algorithm  # noqa: F401  the algorithm choice, named here with the others
from ..te.expr import Binary, Const, Expr, Load, Scalar, Var, free_vars, substitute, subst_vars

MAX_UNROLL = 64  # beyond this an unrolled body only bloats the code


@dataclass(frozen=True)
class Split:
    """axis -> outer * factor + inner (inner in 0..factor); see `split`."""

    axis: str
    factor: int
    outer: str = ""  # default: axis + "o"
    inner: str = ""  # default: axis + "i"

    @property
    def names(self) -> tuple[str, str]:
        return self.outer or self.axis + "o", self.inner or self.axis + "i"

    def apply(self, nest: list[Stmt]) -> list[Stmt]:
        return split(nest, self.axis, self.factor, *self.names)

    def __str__(self) -> str:
        o, i = self.names
        named = "" if (o, i) == (self.axis + "o", self.axis + "i") else f" -> {o}, {i}"
        return f"split({self.axis}, {self.factor}{named})"


@dataclass(frozen=True)
class Reorder:
    """The named loops innermost, in this order; see `reorder` (`...`: the others go there)."""

    axes: tuple[str, ...]

    def apply(self, nest: list[Stmt]) -> list[Stmt]:
        return reorder(nest, self.axes)

    def __str__(self) -> str:
        return f"reorder({', '.join(self.axes)})"


@dataclass(frozen=True)
class Vectorize:
    """The loop over axis runs as SIMD lanes; see `vectorize`."""

    axis: str

    def apply(self, nest: list[Stmt]) -> list[Stmt]:
        return vectorize(nest, self.axis)

    def __str__(self) -> str:
        return f"vectorize({self.axis})"


@dataclass(frozen=True)
class Unroll:
    """The loop over axis is unrolled; see `unroll`."""

    axis: str

    def apply(self, nest: list[Stmt]) -> list[Stmt]:
        return unroll(nest, self.axis)

    def __str__(self) -> str:
        return f"unroll({self.axis})"


@dataclass(frozen=True)
class Parallel:
    """The loop over axis runs on the thread pool; axis None: the outermost output loop of
    the statement, whichever that is (a Tile does not know its statement's axes)."""

    axis: str | None = None

    def apply(self, nest: list[Stmt]) -> list[Stmt]:
        if self.axis is None:
            raise DnncError("parallel(outermost) names no loop: give the axis to apply it to a nest")
        return parallel(nest, self.axis)

    def __str__(self) -> str:
        return f"parallel({self.axis or 'outermost'})"


@dataclass(frozen=True)
class Accumulate:
    """The reduction inside the tile loops `axes` (outermost first) accumulates in the local
    buffer `buffer[extents of axes]` and is stored once; see `accumulate`. When a lane axis
    is a reduction axis the lanes sum different terms and are combined before the store."""

    buffer: str
    axes: tuple[str, ...]

    def apply(self, nest: list[Stmt]) -> tuple[list[Stmt], Buffer]:
        return accumulate(nest, self.axes, self.buffer)

    def __str__(self) -> str:
        return f"accumulate({self.buffer}, {', '.join(self.axes)})"


@dataclass(frozen=True)
class Block:
    """The reduction axis split into blocks of `size`, the block loop hoisted to just inside
    the outermost loop; see `block`."""

    axis: str
    size: int
    outer: str = ""  # default: axis + "o"
    inner: str = ""  # default: axis + "i"

    @property
    def names(self) -> tuple[str, str]:
        return self.outer or self.axis + "o", self.inner or self.axis + "i"

    def apply(self, nest: list[Stmt]) -> list[Stmt]:
        return block(nest, self.axis, self.size, *self.names)

    def __str__(self) -> str:
        return f"block({self.axis}, {self.size})"


def show_composition(tile) -> str:
    """A Tile step as the primitives it is made of: `split(j, 16), vectorize(ji), ...`."""
    return ", ".join(str(p) for p in tile.primitives())


# ----------------------------------------------------------------------------- helpers

def _subst_stmts(stmts, mapping: dict[str, Expr]) -> list[Stmt]:
    """stmts with index variables replaced in every expression."""
    return [_subst_stmt(s, mapping) for s in stmts]


def _subst_stmt(s: Stmt, mapping: dict[str, Expr]) -> Stmt:
    if isinstance(s, Loop):
        return Loop(s.var, s.extent, tuple(_subst_stmts(s.body, mapping)), s.kind)
    if isinstance(s, If):
        return If(subst_vars(s.cond, mapping), tuple(_subst_stmts(s.then, mapping)),
                  tuple(_subst_stmts(s.orelse, mapping)))
    if isinstance(s, Store):
        return Store(s.buffer, tuple(subst_vars(i, mapping) for i in s.index), subst_vars(s.value, mapping))
    if isinstance(s, Let):
        return Let(s.name, subst_vars(s.value, mapping))
    if isinstance(s, Set):
        return Set(s.name, subst_vars(s.value, mapping))
    raise TypeError(s)


def _loop_vars(stmts) -> set[str]:
    return {s.var for s in walk(stmts) if isinstance(s, Loop)}


def _require_loop(what: str, stmts, axis: str) -> None:
    names = _loop_vars(stmts)
    if axis not in names:
        raise DnncError(f"{what}: the nest has no loop over {axis} (loops: {', '.join(sorted(names)) or 'none'})")


def _map_loops(stmts, axis: str, fn, *args) -> list[Stmt]:
    """stmts with every loop over axis replaced by fn(loop, *args) (a list of statements)."""
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Loop) and s.var == axis:
            out += fn(s, *args)
        elif isinstance(s, Loop):
            out.append(Loop(s.var, s.extent, tuple(_map_loops(s.body, axis, fn, *args)), s.kind))
        elif isinstance(s, If):
            out.append(If(s.cond, tuple(_map_loops(s.then, axis, fn, *args)),
                          tuple(_map_loops(s.orelse, axis, fn, *args))))
        else:
            out.append(s)
    return out


# ----------------------------------------------------------------------------- loop-IR primitives

def split(nest: list[Stmt], axis: str, factor: int, outer: str, inner: str) -> list[Stmt]:
    """Every loop over `axis` (extent n) becomes `for outer in 0..ceil(n/factor): for inner in
    0..factor:` with axis = outer * factor + inner in its body.

    Invariant: the nest computes what it computed; when factor does not divide n the body
    runs under `if outer * factor + inner < n`, so the ragged last block does nothing extra.
    The loop must still be serial (kinds are chosen after the loops are laid out).
    """
    what = f"split({axis}, {factor})"
    if not isinstance(factor, int) or factor < 1:
        raise DnncError(f"{what}: the factor must be a positive integer")
    _require_loop(what, nest, axis)
    used = _loop_vars(nest) | {n for s in walk(nest) for n in _stmt_vars(s)}
    for name in (outer, inner):
        if name in used or outer == inner:
            raise DnncError(f"{what}: the new loop name {name} is already used in the nest")
    return _map_loops(nest, axis, _split_loop, what, factor, outer, inner)


def _split_loop(loop: Loop, what: str, factor: int, outer: str, inner: str) -> list[Stmt]:
    if loop.kind != "serial":
        raise DnncError(f"{what}: the loop over {loop.var} is already {loop.kind}; split before choosing kinds")
    index = affine.simplify(Binary("+", Binary("*", Var(outer), Const(factor)), Var(inner)))
    body = _subst_stmts(loop.body, {loop.var: index})
    if loop.extent % factor:
        body = [If(Binary("<", index, Const(loop.extent)), tuple(body))]
    return [Loop(outer, -(-loop.extent // factor), (Loop(inner, factor, tuple(body)),))]


def _stmt_vars(s: Stmt) -> set[str]:
    if isinstance(s, If):
        return free_vars(s.cond)
    if isinstance(s, Store):
        return set().union(*(free_vars(i) for i in s.index), free_vars(s.value))
    if isinstance(s, (Let, Set)):
        return free_vars(s.value)
    return set()


def _chain(s: Stmt, axes: set[str], what: str) -> tuple[list[Loop], list[Expr], list[Stmt]]:
    """The loops from s down to the last of `axes`, the guards met between them, and the body
    inside; each step must hold exactly one loop or one guard (a perfect nest)."""
    loops: list[Loop] = []
    guards: list[Expr] = []
    seen: set[str] = set()
    body: list[Stmt] = [s]
    while seen != axes:
        if len(body) != 1 or not isinstance(body[0], (Loop, If)) or (isinstance(body[0], If) and body[0].orelse):
            missing = ", ".join(sorted(axes - seen))
            raise DnncError(f"{what}: the loops are not perfectly nested (statements beside the loop nest "
                            f"before {missing}); only loops and guards may lie between them")
        top = body[0]
        if isinstance(top, Loop):
            loops.append(top)
            seen |= {top.var} & axes
            body = list(top.body)
        else:
            guards.append(top.cond)
            body = list(top.then)
    while len(body) == 1 and isinstance(body[0], If) and not body[0].orelse:  # masks of the last loop
        guards.append(body[0].cond)
        body = list(body[0].then)
    return loops, guards, body


def reorder(nest: list[Stmt], axes) -> list[Stmt]:
    """The perfectly nested loops from the outermost named one down to the innermost named
    one are permuted: the others keep their order outside (or at `...` among the axes), the
    named ones go innermost in the given order; guards between them sink to the innermost body.

    Invariant: the nest computes what it computed, given that no iteration of these loops
    reads what another writes except as terms of a sum (then up to the order of the terms),
    as in a statement's nest. Guards only read loop variables, so sinking them is exact.
    """
    axes = tuple(axes)
    what = f"reorder({', '.join(axes)})"
    if len(set(axes)) != len(axes):
        raise DnncError(f"{what}: an axis is named twice")
    for a in axes:
        if a != "...":
            _require_loop(what, nest, a)
    return _reorder_in(nest, axes, what)


def _reorder_in(stmts, axes: tuple[str, ...], what: str) -> list[Stmt]:
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Loop) and s.var in axes and s.var != "...":
            out += _permute(s, axes, what)
        elif isinstance(s, Loop):
            out.append(Loop(s.var, s.extent, tuple(_reorder_in(s.body, axes, what)), s.kind))
        elif isinstance(s, If):
            out.append(If(s.cond, tuple(_reorder_in(s.then, axes, what)), tuple(_reorder_in(s.orelse, axes, what))))
        else:
            out.append(s)
    return out


def _permute(top: Loop, axes: tuple[str, ...], what: str) -> list[Stmt]:
    loops, guards, body = _chain(top, set(axes) - {"..."}, what)
    by_name = {lp.var: lp for lp in loops}
    others = [lp for lp in loops if lp.var not in axes]
    at = axes.index("...") if "..." in axes else 0  # reorder(fo, ..., jo): fo outside the others
    order = [by_name[a] for a in axes[:at]] + others + [by_name[a] for a in axes[at:] if a != "..."]
    for lp in loops:
        if lp.kind != "serial":
            raise DnncError(f"{what}: the loop over {lp.var} is already {lp.kind}; reorder before choosing kinds")
    for g in reversed(guards):
        body = [If(g, tuple(body))]
    for lp in reversed(order):
        body = [Loop(lp.var, lp.extent, tuple(body))]
    return body


def _set_kind(nest, axis: str, kind: str, what: str) -> list[Stmt]:
    _require_loop(what, nest, axis)
    return _map_loops(nest, axis, _kind_of, kind, what)


def _kind_of(loop: Loop, kind: str, what: str) -> list[Stmt]:
    """The loop with its kind chosen, if its body allows that kind."""
    if loop.kind != "serial":
        raise DnncError(f"{what}: the loop over {loop.var} is already {loop.kind}")
    if kind == "vector":
        for s in walk(loop.body):
            if isinstance(s, (Loop, Let, Set)):
                inner = f"loop over {s.var}" if isinstance(s, Loop) else f"register {s.name}"
                raise DnncError(f"{what}: the loop's body holds a {inner}; only stores and guards run as lanes")
    if kind == "unroll" and loop.extent > MAX_UNROLL:
        raise DnncError(f"{what}: {loop.extent} iterations is more than {MAX_UNROLL} to unroll; split it first")
    return [Loop(loop.var, loop.extent, loop.body, kind)]


def vectorize(nest: list[Stmt], axis: str) -> list[Stmt]:
    """Every loop over axis runs as SIMD lanes (kind "vector").

    Invariant: the nest computes what it computed. Its body must be straight-line (stores
    under guards): a nested loop or a register cannot be spread across lanes.
    """
    return _set_kind(nest, axis, "vector", f"vectorize({axis})")


def unroll(nest: list[Stmt], axis: str) -> list[Stmt]:
    """Every loop over axis is unrolled (kind "unroll").

    Invariant: the nest computes what it computed; the extent is at most MAX_UNROLL.
    """
    return _set_kind(nest, axis, "unroll", f"unroll({axis})")


def parallel(nest: list[Stmt], axis: str) -> list[Stmt]:
    """The loop over axis, a top-level loop of the nest, runs on the thread pool (kind
    "parallel"); a loop of one iteration stays serial, there being nothing to share.

    Invariant: the nest computes what it computed, given that its iterations write
    disjoint elements (the verifier checks each store depends on the loop's variable).
    """
    what = f"parallel({axis})"
    _require_loop(what, nest, axis)
    if not any(isinstance(s, Loop) and s.var == axis for s in nest):
        raise DnncError(f"{what}: a parallel loop must be outermost in its nest (its iterations are tasks)")
    out = []
    for s in nest:
        if isinstance(s, Loop) and s.var == axis and s.extent >= 2:
            out += _set_kind([s], axis, "parallel", what)
        else:
            out.append(s)
    return out


def _tile(axes: tuple[Loop, ...], guards: list[Expr], body: list[Stmt]) -> list[Stmt]:
    """The tile loops (serial) around body under the tile's masks."""
    for g in reversed(guards):
        body = [If(g, tuple(body))]
    for lp in reversed(axes):
        body = [Loop(lp.var, lp.extent, tuple(body))]
    return body


def _reg_to_load(e: Expr, reg: str, cell: Load) -> Expr:
    """e with register `reg` read from its tile cell instead."""
    return substitute(e, lambda x: cell if isinstance(x, Scalar) and x.name == reg else None)


def accumulate(nest: list[Stmt], axes, buffer: str) -> tuple[list[Stmt], Buffer]:
    """Cache-write: the reduction inside the innermost, perfectly nested loops `axes`
    (outermost first) accumulates in a local register tile `buffer[extents]` instead of a
    register, with the reduction's loops moved outside the tile loops, and the result is
    stored once: init tile; reduction loops around a tile of updates; tile of stores.

    The body inside the tile loops must be `let acc = init; ...updates of acc...; T[..] =
    f(acc)`. Invariant: the nest computes what it computed (each cell holds the register
    its iteration held); the tile's masks (a split's ragged edge) guard every tile, and
    guards of the reduction that read a tile variable mask the update inside the tile.
    """
    axes = tuple(axes)
    what = f"accumulate({buffer}, {', '.join(axes)})"
    for a in axes:
        _require_loop(what, nest, a)
    out: list[Stmt] = []
    made: list[Buffer] = []
    for s in nest:
        out += _accumulate_in(s, axes, buffer, what, made)
    if len(made) != 1:
        raise DnncError(f"{what}: the loops over {', '.join(axes)} must form one tile")
    return out, made[0]


def _accumulate_in(s: Stmt, axes, buffer: str, what: str, made: list) -> list[Stmt]:
    if isinstance(s, Loop) and s.var not in axes:
        body: list[Stmt] = []
        for b in s.body:
            body += _accumulate_in(b, axes, buffer, what, made)
        return [Loop(s.var, s.extent, tuple(body), s.kind)]
    if isinstance(s, Loop) and s.var != axes[0]:
        raise DnncError(f"{what}: the tile loops must be adjacent and innermost, in this order "
                        f"(the loop over {s.var} comes first); reorder them first")
    if not isinstance(s, Loop):
        return [s]
    loops, guards, body = _chain(s, set(axes), what)
    if tuple(lp.var for lp in loops) != axes:
        raise DnncError(f"{what}: the tile loops must be adjacent and innermost, in this order "
                        f"(found {', '.join(lp.var for lp in loops)}); reorder them first")
    if len(body) < 2 or not isinstance(body[0], Let) or not isinstance(body[-1], Store):
        raise DnncError(f"{what}: inside the tile there must be a reduction (let acc = ...; updates; store)")
    reg = body[0].name
    cell = Load(buffer, tuple(Var(a) for a in axes))
    tile_vars = set(axes)
    updates: list[Stmt] = []
    for u in body[1:-1]:
        updates += _hoist(u, reg, cell, loops, guards, tile_vars, what)
    init = _tile(loops, guards, [Store(buffer, cell.index, _reg_to_load(body[0].value, reg, cell))])
    last = body[-1]
    store = Store(last.buffer, last.index, _reg_to_load(last.value, reg, cell))
    made.append(Buffer(buffer, tuple(lp.extent for lp in loops), "local"))
    return init + updates + _tile(loops, guards, [store])


def _hoist(s: Stmt, reg: str, cell: Load, loops, guards, tile_vars: set, what: str) -> list[Stmt]:
    """A reduction statement with the tile loops moved inside it, around its updates."""
    if isinstance(s, Loop):
        body: list[Stmt] = []
        for b in s.body:
            body += _hoist(b, reg, cell, loops, guards, tile_vars, what)
        return [Loop(s.var, s.extent, tuple(body), s.kind)]
    if isinstance(s, If) and not (free_vars(s.cond) & tile_vars) and not s.orelse:
        then: list[Stmt] = []
        for b in s.then:
            then += _hoist(b, reg, cell, loops, guards, tile_vars, what)
        return [If(s.cond, tuple(then))]
    return _tile(loops, guards, [_update(s, reg, cell, what)])


def _update(s: Stmt, reg: str, cell: Load, what: str) -> Stmt:
    """An update of register reg as a store to its tile cell."""
    if isinstance(s, Set) and s.name == reg:
        return Store(cell.tensor, cell.index, _reg_to_load(s.value, reg, cell))
    if isinstance(s, If) and not any(isinstance(x, Loop) for x in walk(s.then + s.orelse)):
        return If(s.cond, tuple(_update(b, reg, cell, what) for b in s.then),
                  tuple(_update(b, reg, cell, what) for b in s.orelse))
    raise DnncError(f"{what}: the reduction may only update its register {reg} (found {type(s).__name__})")


def block(nest: list[Stmt], axis: str, size: int, outer: str, inner: str) -> list[Stmt]:
    """The loop over reduction axis `axis` is split into blocks of `size` (outer, inner), and
    the block loop `outer` is hoisted to just inside the outermost loop of its perfect nest,
    so one block's data serves every iteration between them while it is in cache.

    Every store under the nest must add into memory (`T[..] = T[..] + term`), so the move only
    changes the order of each sum's terms. Invariant: the nest computes what it computed (up
    to that order); a short last block is masked off, as by `split`.
    """
    what = f"block({axis}, {size})"
    split_nest = split(nest, axis, size, outer, inner)
    for s in walk(split_nest):
        if isinstance(s, Store) and not _adds_into(s):
            raise DnncError(f"{what}: the store to {s.buffer} does not add into memory "
                            f"({s.buffer}[..] = {s.buffer}[..] + term); only such sums can be blocked")
    out: list[Stmt] = []
    for s in split_nest:
        out.append(_hoist_block(s, outer, what) if isinstance(s, Loop) else s)
    return out


def _adds_into(s: Store) -> bool:
    v = s.value
    return isinstance(v, Binary) and v.op == "+" and v.a == Load(s.buffer, s.index)


def _hoist_block(top: Loop, outer: str, what: str) -> Loop:
    if top.var == outer:
        return top
    loops, guards, body = _chain(top, {outer}, what)
    if guards:
        raise DnncError(f"{what}: a guard lies between the outermost loop and the block loop")
    order = [loops[0], loops[-1]] + loops[1:-1]
    for lp in reversed(order):
        body = [Loop(lp.var, lp.extent, tuple(body), lp.kind)]
    return body[0]
