"""The loop-nest IR: buffers, kernels and immutable statements, with a readable printer.

A Program is a list of kernels over named buffers. A kernel body is a tuple of statements:
loops (serial, parallel, vector, unrolled, GPU grid, block and thread), guards, stores to buffers,
and float registers (Let declares one, Set updates it). Expressions are the shared nodes of
dnnc.te.expr.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..te.expr import Binary, Const, Expr, Load, Var, show, substitute

# grid: the points of a kernel's leading grid loops are a GPU's threads (ir/passes/grid.py);
# block: its leading block loops are a GPU's blocks, and each thread loop inside them one phase
# of the block's threads, all running at once, a barrier after it (ir/passes/shared.py)
LOOP_KINDS = ("serial", "parallel", "vector", "unroll", "grid", "block", "thread")
# buffers a kernel keeps to itself: registers of a thread (register tiles, whose first index is
# the thread inside thread loops) and the memory of a GPU block
PRIVATE = ("local", "shared")


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[int, ...]
    kind: str  # input | label | hyper | param | state | derived | output | grad | temp | local | shared
    dtype: str = "f32"

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class Stmt:
    __slots__ = ()


@dataclass(frozen=True)
class Loop(Stmt):
    var: str
    extent: int
    body: tuple[Stmt, ...]
    kind: str = "serial"


@dataclass(frozen=True)
class If(Stmt):
    cond: Expr
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...] = ()


@dataclass(frozen=True)
class Store(Stmt):
    buffer: str
    index: tuple[Expr, ...]
    value: Expr


@dataclass(frozen=True)
class Let(Stmt):
    """Declare float register `name` with an initial value (visible to the rest of the block)."""

    name: str
    value: Expr


@dataclass(frozen=True)
class Set(Stmt):
    name: str
    value: Expr


# a warp's tensor-core step, by operand format: (rows, columns, reduction) of one instruction
MMA_SHAPES = {"tf32": (16, 8, 8), "bf16": (16, 8, 16)}
WARP = 32


@dataclass(frozen=True)
class Mma(Stmt):
    """One thread's part of a warp's matrix multiply-accumulate on tensor cores (mma.sync):
    with g = lane / 4 and q = lane % 4, the thread's four cells acc[cell + (r,)] are the
    outputs (row + g + 8 * (r / 2), col + 2 * q + r % 2) of the warp's 16 x 8 tile, and each
    adds, for kk in order, a[k + kk, its row] * b[k + kk, its column] over the instruction's
    reduction (8 for tf32, 16 for bf16). a and b are a block's shared buffers, indexed
    [reduction, row] and [reduction, column], holding values already rounded to the format.
    Per thread it is plain arithmetic (`expand`), which the interpreter, the verifier and the
    CPU run; the GPU runs it as one instruction of the warp, with the sums in its own order."""

    kind: str  # tf32 | bf16
    acc: str
    cell: tuple[Expr, ...]  # the tile's index before the cell's r
    a: str
    b: str
    row: Expr
    col: Expr
    k: Expr
    lane: Expr

    def expand(self) -> tuple[Stmt, ...]:
        g, q = Binary("/", self.lane, Const(4)), Binary("%", self.lane, Const(4))
        r, kk = Var("r.mma"), Var("kk.mma")
        row = Binary("+", Binary("+", self.row, g), Binary("*", Binary("/", r, Const(2)), Const(8)))
        col = Binary("+", Binary("+", self.col, Binary("*", q, Const(2))), Binary("%", r, Const(2)))
        at = Binary("+", self.k, kk)
        cell = self.cell + (r,)
        term = Binary("*", Load(self.a, (at, row)), Load(self.b, (at, col)))
        fold = Store(self.acc, cell, Binary("+", Load(self.acc, cell), term))
        return (Loop(r.name, 4, (Loop(kk.name, MMA_SHAPES[self.kind][2], (fold,)),), "unroll"),)

    def with_exprs(self, fn) -> "Mma":
        cell = tuple(fn(e) for e in self.cell)
        return Mma(self.kind, self.acc, cell, self.a, self.b, fn(self.row), fn(self.col), fn(self.k), fn(self.lane))


@dataclass(frozen=True)
class Kernel:
    name: str
    body: tuple[Stmt, ...]
    layer: str = ""  # the layer this kernel computes, for per-layer printing


@dataclass(frozen=True)
class Program:
    name: str
    buffers: tuple[Buffer, ...]
    kernels: tuple[Kernel, ...]
    schedule: tuple = ()  # the steps (schedule.Tile, Pack) this program was lowered with

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    @property
    def args(self) -> tuple[Buffer, ...]:
        """Buffers passed to the compiled function, in this order; temps live in the workspace
        and private buffers (register tiles, a GPU block's memory) inside their kernels."""
        return tuple(b for b in self.buffers if b.kind != "temp" and b.kind not in PRIVATE)

    def replace_kernels(self, kernels) -> "Program":
        return Program(self.name, self.buffers, tuple(kernels), self.schedule)


# ----------------------------------------------------------------------------- printer

def show_stmt(s: Stmt, indent: int = 0) -> list[str]:
    pad = "  " * indent
    if isinstance(s, Loop):
        kind = "" if s.kind == "serial" else s.kind + " "
        out = [f"{pad}{kind}for {s.var} in 0..{s.extent}:"]
        for b in s.body:
            out += show_stmt(b, indent + 1)
        return out
    if isinstance(s, If):
        out = [f"{pad}if {show(s.cond)}:"]
        for b in s.then:
            out += show_stmt(b, indent + 1)
        if s.orelse:
            out.append(f"{pad}else:")
            for b in s.orelse:
                out += show_stmt(b, indent + 1)
        return out
    if isinstance(s, Store):
        return [f"{pad}{s.buffer}[{', '.join(show(i) for i in s.index)}] = {show(s.value)}"]
    if isinstance(s, Let):
        return [f"{pad}let {s.name} = {show(s.value)}"]
    if isinstance(s, Set):
        return [f"{pad}{s.name} = {show(s.value)}"]
    if isinstance(s, Mma):
        cell = ", ".join(show(i) for i in s.cell)
        return [f"{pad}mma.{s.kind} {s.acc}[{cell}, :] += {s.a}[{show(s.k)}:, {show(s.row)}:] "
                f"* {s.b}[{show(s.k)}:, {show(s.col)}:] (lane {show(s.lane)})"]
    raise TypeError(s)


def show_kernel(k: Kernel) -> str:
    lines = [f"kernel {k.name}:"]
    for s in k.body:
        lines += show_stmt(s, 1)
    return "\n".join(lines)


def show_program(p: Program, layer: str | None = None) -> str:
    out = [f"program {p.name}"]
    for b in p.buffers:
        out.append(f"  {b.kind:6} {b.name}: {b.dtype}[{', '.join(map(str, b.shape))}]")
    for k in p.kernels:
        if layer is None or k.layer == layer or k.layer.startswith(layer + "."):
            out.append("")
            out.append(show_kernel(k))
    return "\n".join(out) + "\n"


def walk(stmts):
    """Every statement, depth first."""
    for s in stmts:
        yield s
        if isinstance(s, Loop):
            yield from walk(s.body)
        elif isinstance(s, If):
            yield from walk(s.then)
            yield from walk(s.orelse)


def rewrite(stmts, on_loop, on_if=None, ranges=None, entries: int = 1) -> tuple[Stmt, ...]:
    """stmts rebuilt bottom up, the one walk of the passes that rewrite loops and guards.

    Each loop's body and each guard's branches are rebuilt first; then `on_loop(loop, ranges,
    entries)` and `on_if(guard, ranges)` give the statements that replace the rebuilt loop or
    guard (a list: none, itself, or several). Stores and registers are kept. `ranges` maps the
    variables of the loops around a statement to (0, extent - 1) and `entries` is how many
    times it runs (the product of those loops' extents), both as seen outside the loop or
    guard being replaced. Without on_if, guards are kept.
    """
    ranges = {} if ranges is None else ranges
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Loop):
            inner = dict(ranges)
            inner[s.var] = (0, s.extent - 1)
            body = rewrite(s.body, on_loop, on_if, inner, entries * s.extent)
            out.extend(on_loop(Loop(s.var, s.extent, body, s.kind), ranges, entries))
        elif isinstance(s, If):
            then = rewrite(s.then, on_loop, on_if, ranges, entries)
            orelse = rewrite(s.orelse, on_loop, on_if, ranges, entries)
            rebuilt = If(s.cond, then, orelse)
            out.extend(on_if(rebuilt, ranges) if on_if is not None else [rebuilt])
        else:
            out.append(s)
    return tuple(out)


def exprs_in(stmts):
    """Every expression the statements hold (conditions, indices, values), depth first."""
    for s in walk(stmts):
        if isinstance(s, If):
            yield s.cond
        elif isinstance(s, Store):
            yield from s.index
            yield s.value
        elif isinstance(s, (Let, Set)):
            yield s.value


def map_exprs(stmts, fn) -> tuple[Stmt, ...]:
    """stmts with every expression in them (conditions, indices, values) replaced by fn(expr)."""
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Loop):
            out.append(Loop(s.var, s.extent, map_exprs(s.body, fn), s.kind))
        elif isinstance(s, If):
            out.append(If(fn(s.cond), map_exprs(s.then, fn), map_exprs(s.orelse, fn)))
        elif isinstance(s, Store):
            out.append(Store(s.buffer, tuple(fn(i) for i in s.index), fn(s.value)))
        elif isinstance(s, Mma):
            out.append(s.with_exprs(fn))
        else:
            out.append(type(s)(s.name, fn(s.value)))
    return tuple(out)


def rename_buffers(stmts, names: dict[str, str]) -> tuple[Stmt, ...]:
    """stmts with every buffer they read or write renamed by `names` (the others kept)."""

    def expr(e: Expr) -> Expr:
        return substitute(e, lambda x: Load(names[x.tensor], x.index, x.loc)
                          if isinstance(x, Load) and x.tensor in names else None)

    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Loop):
            out.append(Loop(s.var, s.extent, rename_buffers(s.body, names), s.kind))
        elif isinstance(s, If):
            out.append(If(expr(s.cond), rename_buffers(s.then, names), rename_buffers(s.orelse, names)))
        elif isinstance(s, Store):
            out.append(Store(names.get(s.buffer, s.buffer), tuple(expr(i) for i in s.index), expr(s.value)))
        elif isinstance(s, Mma):
            n = lambda b: names.get(b, b)
            out.append(Mma(s.kind, n(s.acc), s.cell, n(s.a), n(s.b), s.row, s.col, s.k, s.lane))
        else:
            out.append(type(s)(s.name, expr(s.value)))
    return tuple(out)
