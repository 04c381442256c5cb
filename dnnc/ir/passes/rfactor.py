"""Reductions across threads: a long reduction of a kernel with few threads split in two.

A bias gradient sums a whole batch of feature maps into each of 64 values: bound as it is,
64 threads each add 200,000 numbers while the rest of the GPU waits. This pass (Halide's and
TVM's rfactor) gives such a kernel C times the threads: the reduction's loops are flattened
into one index, dealt into C chunks (chunk c takes iterations c, c + C, ...), and each
(point, chunk) folds its chunk into a partial
result; a second kernel folds each point's C partials, in order, from the original initial
value, and runs the statements after the reduction. The partials live in a temporary.

Only folds whose operator is associative are split: `acc = acc + e`, `acc = max(acc, e)`,
`acc = min(acc, e)`, with acc read nowhere else in the loop. Sums are then added in another
order (float rounding differs, as between any two orders); max and min are exact.
"""
from __future__ import annotations

import math

from ...te.expr import Binary, Const, Load, Scalar, Var, subst_vars
from .. import Buffer, If, Kernel, Let, Loop, Program, Set, Store, map_exprs, walk
from .folds import IDENTITY, all_of, decode, fold_op, grid_nest, reduction, reduction_chain
from .grid import grid_loops

FEW_THREADS = 65536  # a kernel with fewer threads than this leaves much of a GPU idle
WANTED_THREADS = 1 << 20  # what the split aims for: enough for register tiles (thread_tile.py) of 16
MIN_CHUNK = 32  # iterations a thread folds at least
MAX_CHUNKS = 1024


def split_reductions(p: Program) -> Program:
    """Invariant: computes what p computes, up to the order of float additions. A bound
    kernel (grid loops, then registers folded over nested loops, perhaps with a guard between
    two of them, then statements using the registers) with fewer than FEW_THREADS points and
    a fold of at least 2 * MIN_CHUNK iterations becomes two bound kernels, NAME.part and NAME, through temporaries
    NAME.REGISTER.part[grid..., chunk]."""
    buffers = list(p.buffers)
    kernels: list[Kernel] = []
    for k in p.kernels:
        split = _split(k)
        if split is None:
            kernels.append(k)
            continue
        parts, first, second = split
        buffers += parts
        kernels += [first, second]
    return Program(p.name, tuple(buffers), tuple(kernels), p.schedule)


def _split(k: Kernel):
    loops, body = grid_loops(k.body)
    if not loops:
        return None
    points = math.prod(lp.extent for lp in loops)
    form = reduction(body)
    if points >= FEW_THREADS or form is None:
        return None
    lets, red, rest = form
    chain, conds = reduction_chain(red)
    inner = chain[-1].body
    ops = {}
    for s in walk(inner):
        if isinstance(s, Set):
            op = fold_op(s)
            if op is None or ops.setdefault(s.name, op) != op:
                return None
    accs = [lt.name for lt in lets if lt.name in ops]
    if not accs or any(isinstance(s, Let) and s.name in accs for s in walk(inner)):
        return None
    declared = {lt.name for lt in lets}
    if any(isinstance(x, Scalar) and x.name in declared for x in _reads(inner)):
        return None  # a register of the chunk read as it stands, not folded
    length = math.prod(lp.extent for lp in chain)
    chunks = min(MAX_CHUNKS, max(2, -(-WANTED_THREADS // points)), length // MIN_CHUNK)
    if chunks < 2:
        return None
    size = -(-length // chunks)
    chunks = -(-length // size)  # no empty chunk
    names = {lp.var for lp in loops}
    ro, ri = _fresh("ro", names, inner), _fresh("ri", names, inner)
    # chunk ro folds iterations ro, ro + C, ro + 2C, ...: neighbouring threads read neighbouring elements
    t = Binary("+", Binary("*", Var(ri), Const(chunks)), Var(ro))
    at = decode(t, [(lp.var, lp.extent) for lp in chain])  # the chain's variables from the flat index t
    if conds:  # the guards between the flattened loops, tested at each iteration
        inner = (If(all_of(conds), tuple(inner)),)
    folded = map_exprs(inner, lambda e: subst_vars(e, at))
    if chunks * size != length:
        folded = (If(Binary("<", t, Const(length)), folded),)
    grid = [Var(lp.var) for lp in loops]
    shape = tuple(lp.extent for lp in loops) + (chunks,)
    parts = [Buffer(f"{k.name}.{a}.part", shape, "temp") for a in accs]
    first = tuple(Let(a, Const(IDENTITY[ops[a]])) for a in accs) + (Loop(ri, size, folded),) + tuple(
        Store(b.name, tuple(grid) + (Var(ro),), Scalar(a)) for a, b in zip(accs, parts))
    first = grid_nest([(ro, chunks)], first)
    second = tuple(lets) + (Loop(ro, chunks, tuple(
        Set(a, Binary(ops[a], Scalar(a), Load(b.name, tuple(grid) + (Var(ro),)))) for a, b in zip(accs, parts)),),
    ) + tuple(rest)
    outer = [(lp.var, lp.extent) for lp in loops]
    first_kernel = Kernel(k.name + ".part", grid_nest(outer, first), k.layer)
    return parts, first_kernel, Kernel(k.name, grid_nest(outer, second), k.layer)


def _reads(stmts):
    """Every expression node the statements read, but for a fold's read of its own register."""
    for s in walk(stmts):
        if isinstance(s, If):
            yield from s.cond.walk()
        elif isinstance(s, Store):
            for e in s.index + (s.value,):
                yield from e.walk()
        elif isinstance(s, Set) and fold_op(s):
            yield from s.value.b.walk()
        elif isinstance(s, (Let, Set)):
            yield from s.value.walk()


def _fresh(stem: str, used: set[str], stmts) -> str:
    taken = used | {s.var for s in walk(stmts) if isinstance(s, Loop)}
    k = 0
    while f"{stem}{k}" in taken:
        k += 1
    return f"{stem}{k}"
