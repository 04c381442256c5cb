"""Block tiles staged through shared memory: a block of GPU threads computes a BM x BN tile
of a contraction, and reads each operand once per block instead of once per thread.

A convolution, a dense layer and their gradients are contractions: an output point folds
products of two operands, one that does not depend on some of the point's loops (a weight
does not depend on the batch and pixel) and one that does not depend on the others (an
input does not depend on the filter). Flattening the first group of loops into a row index
m < M, the second into a column index n < N and the reduction's loops into k < K makes the
kernel a matrix product (an implicit GEMM: the operands are read through the kernel's own
index expressions; nothing is copied to a matrix first). The loops both operands depend on
(a depthwise channel) index independent products, one per block.

The kernel becomes, for each block of THREADS threads and each tile of BM rows and BN
columns:

    thread for t: tile[t, i, j] = init                    (each thread has CM x CN cells)
    for kc in 0..K / BK:
        thread for t: A[kk, mm] = operand a at (m0 + mm, kc * BK + kk), 0 past the edges
                      B[kk, nn] = operand b at (n0 + nn, kc * BK + kk)
        thread for t: tile[t, i, j] += A[kk, row(t) + i] * B[kk, col(t) + j]  for every kk
                      (STEP of them unrolled at a time)
    thread for t: the statements after the reduction, for each cell inside the M x N edge

Each `thread` loop is one phase: its iterations run at once on the block's threads, and a
barrier ends it (codegen/nvptx.py); A and B are `shared` buffers, the block's memory; a
tile's first index is the thread, so each thread's cells are its registers. Run serially
(the reference interpreter, the CPU), the phases compute the same thing. A guard of the
reduction (a padded convolution's edge) goes with the operand whose loops it reads, as a
select of that operand or 0.

With too few tiles to fill the GPU (a weight gradient: a few filters, a long reduction over
the batch), K is split into S slices of consecutive chunks: block (s, tile) folds slice s
into partials P[s, point] from 0, and a second kernel folds each point's partials, in order,
from the original initial value and runs the statements after the reduction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ...te.expr import Binary, Const, Expr, Load, Scalar, Select, Unary, Var, free_vars, subst_vars, substitute
from .. import MMA_SHAPES, WARP, Buffer, If, Kernel, Let, Loop, Mma, Program, Set, Stmt, Store, map_exprs, walk
from .folds import all_of, decode, fold_op, fresh, grid_nest, reduction, reduction_chain
from .grid import grid_loops

THREADS = 256  # a block: codegen/nvptx.py launches this many threads per block
CELL = 4  # each thread's cells along M and along N: 16 sums in registers
BK = 16  # reduction iterations staged at once: (BM + BN) * BK * 4 bytes of shared memory
PAD = 8  # tensor cores: a shared row is padded so a fragment's 32 reads fall in 32 banks
STEP = 4  # of which a thread's loop over them unrolls this many: its reads of the next step
# overlap the multiply-adds of this one (all 16 would make LLVM IR too long to build quickly)
LAYOUTS = ((16, 16), (8, 32), (32, 8), (4, 64), (64, 4))  # threads along M x along N
MAX_PADDING = 1.5  # a tile shape computes at most this times the real outputs, or is not used
FULL_GPU = 528  # tiles wanted at once, 4 per multiprocessor of a 132-SM GPU; fewer split K
MIN_SLICE = 16  # chunks of BK a slice of a split reduction folds at least
MAX_SLICES = 256


@dataclass(frozen=True)
class Contraction:
    """A bound kernel read as a matrix product (see the module's docstring)."""

    acc: str  # the register the reduction folds
    init: Expr  # its initial value
    rows: tuple[tuple[str, int], ...]  # the grid loops operand a depends on and b does not: m
    cols: tuple[tuple[str, int], ...]  # the grid loops b depends on and a does not: n
    batch: tuple[tuple[str, int], ...]  # the other grid loops, one product per point
    red: tuple[tuple[str, int], ...]  # the reduction's loops: k
    a: Expr  # operand a, with the reduction's guards on its loops as a select
    b: Expr
    rest: tuple[Stmt, ...]  # the statements after the reduction
    grid: tuple[tuple[str, int], ...]  # the kernel's grid loops, in order

    @property
    def shape(self) -> tuple[int, int, int]:
        return _extent(self.rows), _extent(self.cols), _extent(self.red)


def stage_shared(p: Program, precision: str = "fp32") -> Program:
    """Invariant: computes what p computes, up to the order of float additions where K is
    split (unsplit, each output folds its terms in the same order, adding 0 past the edges).
    A bound kernel that is a contraction of M x N outputs over K >= BK terms, with a tile
    shape that pads it by at most MAX_PADDING, becomes a kernel of `block`
    loops (one block per tile) whose `thread` loops stage its operands in `shared` buffers
    NAME.a and NAME.b and fold into `local` NAME.ACC.tile; split, it is NAME.split and NAME,
    through the temporary NAME.ACC.split. With precision tf32 or bf16 the operands are staged
    rounded to that format and folded by the tensor cores (ir.Mma steps of each warp)."""
    buffers = list(p.buffers)
    kernels: list[Kernel] = []
    for k in p.kernels:
        c = contraction(k)
        tiling = c and _tiling(c)
        if tiling is None:
            kernels.append(k)
            continue
        made, bufs = _stage(k, c, *tiling, precision)
        kernels += made
        buffers += bufs
    return Program(p.name, tuple(buffers), tuple(kernels), p.schedule)


def contraction(k: Kernel) -> Contraction | None:
    """k read as a contraction, or None: grid loops; one register; a reduction of loops
    (and guards) folding `acc = acc + a * b`; statements after it."""
    loops, body = grid_loops(k.body)
    form = reduction(body) if loops else None
    if form is None or len(form[0]) != 1:
        return None
    (let,), red, rest = form
    chain, conds = reduction_chain(red)
    stmts = chain[-1].body
    while len(stmts) == 1 and isinstance(stmts[0], If) and not stmts[0].orelse:
        conds.append(stmts[0].cond)
        stmts = stmts[0].then
    if len(stmts) != 1 or not isinstance(stmts[0], Set) or stmts[0].name != let.name or fold_op(stmts[0]) != "+":
        return None
    term = stmts[0].value.b
    while isinstance(term, Select) and term.b == Const(0.0):  # acc + (c ? e : 0) is e under guard c
        conds.append(term.cond)
        term = term.a
    factors = _factors(term)
    if any(isinstance(x, Scalar) for f in factors + conds for x in f.walk()):
        return None  # a register read in the reduction
    grid = [lp.var for lp in loops]
    uses = [free_vars(f) & set(grid) for f in factors]
    dependent = [u for u in uses if u]
    if len(dependent) < 2:
        return None
    batch = set.intersection(*dependent)
    sides = _components([u - batch for u in uses])
    if sides is None:
        return None
    a_vars, b_vars = sides
    if loops[-1].var in a_vars:  # the innermost loop's neighbouring points are neighbouring threads: n
        a_vars, b_vars = b_vars, a_vars
    batch = set(grid) - a_vars - b_vars
    on_b = [bool(u - batch) and u - batch <= b_vars for u in uses]
    a_f = [f for f, b in zip(factors, on_b) if not b]  # with the factors of no grid loop
    b_f = [f for f, b in zip(factors, on_b) if b]
    a_c, b_c = [], []
    for c in conds:
        own = free_vars(c) & set(grid) - batch
        if own <= a_vars:
            a_c.append(c)
        elif own <= b_vars:
            b_c.append(c)
        else:
            return None  # a guard on both operands' loops
    ext = {lp.var: lp.extent for lp in loops}
    pick = lambda names: tuple((v, ext[v]) for v in grid if v in names)
    return Contraction(let.name, let.value, pick(a_vars), pick(b_vars), pick(batch),
                       tuple((lp.var, lp.extent) for lp in chain),
                       _guarded(a_c, _product(a_f)), _guarded(b_c, _product(b_f)), tuple(rest),
                       tuple((lp.var, lp.extent) for lp in loops))


def _tiling(c: Contraction):
    """(threads along M, along N, slices of K, chunks of BK per slice) for c, or None where
    no tile shape fits."""
    M, N, K = c.shape
    if K < BK:
        return None
    best = None
    for tm, tn in LAYOUTS:
        bm, bn = tm * CELL, tn * CELL
        padded = -(-M // bm) * bm * -(-N // bn) * bn
        if padded <= MAX_PADDING * M * N and (best is None or padded < best[0]):
            best = (padded, tm, tn)
    if best is None:
        return None
    _, tm, tn = best
    tiles = -(-M // (tm * CELL)) * -(-N // (tn * CELL)) * _extent(c.batch)
    chunks = -(-K // BK)
    slices = max(1, min(MAX_SLICES, -(-FULL_GPU // tiles), chunks // MIN_SLICE))
    per = -(-chunks // slices)
    return tm, tn, -(-chunks // per), per  # no empty slice


def _stage(k: Kernel, c: Contraction, tm: int, tn: int, slices: int, per: int, precision: str):
    M, N, K = c.shape
    bm, bn = tm * CELL, tn * CELL
    names = {s.var for s in walk(k.body) if isinstance(s, Loop)}
    mb, nb, kc, t, e, s = (fresh(n, names) for n in ("mb", "nb", "kc", "t", "e", "s"))
    split = slices > 1
    pad = 0 if precision == "fp32" else PAD
    a_buf = Buffer(f"{k.name}.a", (BK, bm + pad), "shared")
    b_buf = Buffer(f"{k.name}.b", (BK, bn + pad), "shared")
    kbase = Binary("*", Binary("+", Binary("*", Var(s), Const(per)), Var(kc)) if split else Var(kc), Const(BK))

    def staging(buf, operand, loops, size, base):
        """buf[kk, x] = operand at (base + x, k) for the BK x size elements, THREADS at a time."""
        fast_m = _fast_along(operand, loops[-1][0] if loops else None)
        flat = Binary("+", Binary("*", Var(e), Const(THREADS)), Var(t))
        x, q = (Binary("%", flat, Const(size)), Binary("/", flat, Const(size))) if fast_m else (
            Binary("/", flat, Const(BK)), Binary("%", flat, Const(BK)))
        m = Binary("+", base, x)
        kx = Binary("+", kbase, q)
        at = _decode(m, loops) | _decode(kx, c.red)
        valid = all_of(([Binary("<", m, Const(_extent(loops)))] if _ragged(loops, size) else []) +
                       ([Binary("<", kx, Const(K))] if slices * per * BK != K else []))
        value = subst_vars(operand, at)
        if precision != "fp32":  # the tensor cores' operands, rounded once as they are staged
            value = Unary(precision, value)
        if valid is not None:
            value = Select(valid, value, Const(0.0))
        return Loop(e, size * BK // THREADS, (Store(buf.name, (q, x), value),), "unroll")

    lay = (_CudaCores.of(names, Var(t), tn) if precision == "fp32"
           else _TensorCores.of(names, Var(t), tm, tn, precision))
    tile = Buffer(f"{k.name}.{c.acc}.tile", (THREADS,) + tuple(n for _, n in lay.cells), "local")
    cell = (Var(t),) + tuple(Var(v) for v, _ in lay.cells)
    acc = Load(tile.name, cell)

    def each(body):  # body for each of the thread's cells
        for v, n in reversed(lay.cells):
            body = (Loop(v, n, tuple(body), "unroll"),)
        return tuple(body)

    m0 = Binary("*", Var(mb), Const(bm))
    n0 = Binary("*", Var(nb), Const(bn))
    at = _decode(Binary("+", m0, lay.row), c.rows) | _decode(Binary("+", n0, lay.col), c.cols)
    inside = all_of(([Binary("<", Binary("+", m0, lay.row), Const(M))] if _ragged(c.rows, bm) else []) +
                    ([Binary("<", Binary("+", n0, lay.col), Const(N))] if _ragged(c.cols, bn) else []))
    init = Const(0.0) if split else subst_vars(c.init, at)
    chunk = Loop(kc, per, (
        Loop(t, THREADS, (staging(a_buf, c.a, c.rows, bm, m0), staging(b_buf, c.b, c.cols, bn, n0)), "thread"),
        Loop(t, THREADS, lay.fold(tile.name, a_buf.name, b_buf.name), "thread"),
    ))
    point = tuple(Var(v) for v, _ in c.batch) + tuple(at[v] for v, _ in c.rows + c.cols)
    if split:
        part = Buffer(f"{k.name}.{c.acc}.split", (slices,) + tuple(n for _, n in c.batch + c.rows + c.cols), "temp")
        after: tuple[Stmt, ...] = (Store(part.name, (Var(s),) + point, acc),)
    else:
        after = map_exprs(c.rest, lambda x: substitute(subst_vars(x, at), lambda y: acc if y == Scalar(c.acc) else None))
    if inside is not None:
        after = (If(inside, tuple(after)),)
    body = (Loop(t, THREADS, each([Store(tile.name, cell, init)]), "thread"), chunk,
            Loop(t, THREADS, each(after), "thread"))
    blocks = list(c.batch) + ([(s, slices)] if split else []) + [(mb, -(-M // bm)), (nb, -(-N // bn))]
    for v, n in reversed(blocks):
        body = (Loop(v, n, body, "block"),)
    bufs = [a_buf, b_buf, tile]
    if not split:
        return [Kernel(k.name, body, k.layer)], bufs
    # the partials of each point, folded in order from the initial value
    point = tuple(Var(v) for v, _ in c.batch + c.rows + c.cols)
    fold_parts = (Let(c.acc, c.init), Loop(s, slices, (
        Set(c.acc, Binary("+", Scalar(c.acc), Load(part.name, (Var(s),) + point))),)), *c.rest)
    second = Kernel(k.name, grid_nest(c.grid, fold_parts), k.layer)
    return [Kernel(k.name + ".split", body, k.layer), second], bufs + [part]


@dataclass(frozen=True)
class _CudaCores:
    """CELL x CELL cells per thread (unrolled loops i, j), the threads a grid of tn columns
    over the tile; a staged chunk folds into them in reduction order, STEP steps unrolled."""

    t: Expr
    cells: tuple[tuple[str, int], ...]
    row: Expr
    col: Expr
    ko: str
    ki: str

    @classmethod
    def of(cls, names: set[str], t: Expr, tn: int) -> "_CudaCores":
        i, j, ko, ki = (fresh(n, names) for n in ("i", "j", "ko", "ki"))
        row = Binary("+", Binary("*", Binary("/", t, Const(tn)), Const(CELL)), Var(i))
        col = Binary("+", Binary("*", Binary("%", t, Const(tn)), Const(CELL)), Var(j))
        return cls(t, ((i, CELL), (j, CELL)), row, col, ko, ki)

    def fold(self, tile: str, a: str, b: str) -> tuple[Stmt, ...]:
        """tile[t, i, j] += a[kk, row] * b[kk, col], kk in order."""
        cell = (self.t,) + tuple(Var(v) for v, _ in self.cells)
        kk = Binary("+", Binary("*", Var(self.ko), Const(STEP)), Var(self.ki))
        product = Binary("*", Load(a, (kk, self.row)), Load(b, (kk, self.col)))
        body: tuple[Stmt, ...] = (Store(tile, cell, Binary("+", Load(tile, cell), product)),)
        for v, n in reversed(self.cells):
            body = (Loop(v, n, body, "unroll"),)
        return (Loop(self.ko, BK // STEP, (Loop(self.ki, STEP, body, "unroll"),)),)


@dataclass(frozen=True)
class _TensorCores:
    """The accumulators of mma.sync: the block's 8 warps a wm x wn grid over the tile, each
    warp mt x nt instructions of 16 x 8 outputs, 4 cells per thread in each (ir.Mma), the
    cells unrolled loops mi, ni, r."""

    t: Expr
    cells: tuple[tuple[str, int], ...]
    row: Expr
    col: Expr
    kind: str  # tf32 | bf16
    ks: str
    warp_row: Expr  # the first row and column of the thread's warp in the tile
    warp_col: Expr

    @classmethod
    def of(cls, names: set[str], t: Expr, tm: int, tn: int, kind: str) -> "_TensorCores":
        bm, bn = tm * CELL, tn * CELL
        warps = THREADS // WARP
        wm = next(w for w in (2, 4, 1, 8) if bm % (16 * w) == 0 and bn % (8 * (warps // w)) == 0)
        wn = warps // wm
        mt, nt = bm // wm // 16, bn // wn // 8
        mi, ni, r, ks = (fresh(n, names) for n in ("mi", "ni", "r", "ks"))
        warp, lane = Binary("/", t, Const(WARP)), Binary("%", t, Const(WARP))
        wr = Binary("*", Binary("/", warp, Const(wn)), Const(bm // wm))
        wc = Binary("*", Binary("%", warp, Const(wn)), Const(bn // wn))
        row = Binary("+", Binary("+", Binary("+", wr, Binary("*", Var(mi), Const(16))), Binary("/", lane, Const(4))),
                     Binary("*", Binary("/", Var(r), Const(2)), Const(8)))
        col = Binary("+", Binary("+", Binary("+", wc, Binary("*", Var(ni), Const(8))),
                                 Binary("*", Binary("%", lane, Const(4)), Const(2))), Binary("%", Var(r), Const(2)))
        return cls(t, ((mi, mt), (ni, nt), (r, 4)), row, col, kind, ks, wr, wc)

    def fold(self, tile: str, a: str, b: str) -> tuple[Stmt, ...]:
        """For each step of the instruction's reduction, each of the warp's mt x nt instructions."""
        (mi, mt), (ni, nt), _ = self.cells
        k_step = MMA_SHAPES[self.kind][2]
        step = Mma(self.kind, tile, (self.t, Var(mi), Var(ni)), a, b,
                   Binary("+", self.warp_row, Binary("*", Var(mi), Const(16))),
                   Binary("+", self.warp_col, Binary("*", Var(ni), Const(8))),
                   Binary("*", Var(self.ks), Const(k_step)), Binary("%", self.t, Const(WARP)))
        return (Loop(self.ks, BK // k_step, (Loop(mi, mt, (Loop(ni, nt, (step,), "unroll"),), "unroll"),), "unroll"),)


def _factors(e: Expr) -> list[Expr]:
    """The factors of a product, left to right."""
    if isinstance(e, Binary) and e.op == "*":
        return _factors(e.a) + _factors(e.b)
    return [e]


def _product(factors: list[Expr]) -> Expr:
    out = factors[0]
    for f in factors[1:]:
        out = Binary("*", out, f)
    return out


def _guarded(conds: list[Expr], e: Expr) -> Expr:
    c = all_of(conds)
    return e if c is None else Select(c, e, Const(0.0))


def _components(uses: list[set[str]]):
    """The two groups of loops the factors' loop sets fall into when factors that share a
    loop go together (factors of no loop join either), or None if not exactly two."""
    groups: list[set[str]] = []
    for u in uses:
        if not u:
            continue
        joined = [g for g in groups if g & u]
        merged = set(u).union(*joined)
        groups = [g for g in groups if not g & u] + [merged]
    return (groups[0], groups[1]) if len(groups) == 2 else None


def _fast_along(operand: Expr, innermost: str | None) -> bool:
    """Whether operand's reads move along memory with its innermost own loop (stage along m,
    neighbouring threads reading neighbouring elements) rather than with the reduction."""
    loads = [x for x in operand.walk() if isinstance(x, Load)]
    return bool(loads) and innermost is not None and innermost in free_vars(loads[0].index[-1])


def _decode(flat: Expr, loops) -> dict[str, Expr]:
    """The loops' variables at row-major index flat, clamped to the last point: a read past
    an edge stays in bounds, and its value is not used."""
    return decode(Binary("min", flat, Const(_extent(loops) - 1)), loops) if loops else {}


def _extent(loops) -> int:
    return math.prod(e for _, e in loops)


def _ragged(loops, size: int) -> bool:
    return _extent(loops) % size != 0
