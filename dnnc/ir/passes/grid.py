"""Loops bound to a GPU's threads: every kernel split into launches, each launch's leading
data-parallel loops marked `grid`.

A GPU runs a kernel as many threads at once, so what one launch computes must not depend on
the order of its threads. This pass finds, for each top-level loop nest of a kernel, the
longest run of perfectly nested outer loops whose iterations are independent, marks them
`grid` (each point of their product is one thread) and makes that nest a kernel of its own.
Statements that bind no loop (a reduction to one value, a nest whose iterations share a
register) run, in order, as one kernel of a single thread.

The independence test is exact arithmetic on addresses, not a guess: every buffer the nest
writes is written at one address expression, which must take a different value at every
point of the bound loops (the loops' coefficients in it form a mixed radix); a buffer it
writes is read only at that same address; and it touches no register declared outside it.
"""
from __future__ import annotations

from ...te import affine
from ...te.expr import Expr, Load, Scalar, free_vars
from .. import Kernel, Let, Loop, Program, Set, Stmt, Store, exprs_in, walk


def bind_grid(p: Program) -> Program:
    """Invariant: computes what p computes. Each kernel becomes one or more kernels, in
    order: a nest led by `grid` loops (its own kernel), or a run of statements binding no
    loop. The first keeps the kernel's name, later ones are NAME#1, NAME#2, ...; all keep
    its layer. The points of a kernel's grid loops write disjoint elements and read no
    element another point writes."""
    shapes = {b.name: b.shape for b in p.buffers}
    local = {b.name for b in p.buffers if b.kind == "local"}
    kernels: list[Kernel] = []
    for k in p.kernels:
        pieces: list[tuple[Stmt, ...]] = []
        run: list[Stmt] = []
        for s in k.body:
            bound = _bind(s, shapes, local) if isinstance(s, Loop) else None
            if bound is None:
                run.append(s)
                continue
            if run:
                pieces.append(tuple(run))
                run = []
            pieces.append((bound,))
        if run:
            pieces.append(tuple(run))
        for i, body in enumerate(pieces):
            kernels.append(Kernel(k.name if i == 0 else f"{k.name}#{i}", body, k.layer))
    return p.replace_kernels(kernels)


def grid_loops(body: tuple[Stmt, ...]) -> tuple[list[Loop], tuple[Stmt, ...]]:
    """The leading grid loops of a bound kernel's body and the statements inside them."""
    return leading_loops(body, "grid")


def leading_loops(body: tuple[Stmt, ...], kind: str) -> tuple[list[Loop], tuple[Stmt, ...]]:
    """The perfectly nested loops of this kind that lead body, and the statements inside them."""
    loops: list[Loop] = []
    while len(body) == 1 and isinstance(body[0], Loop) and body[0].kind == kind:
        loops.append(body[0])
        body = body[0].body
    return loops, body


def _chain(s: Loop) -> list[Loop]:
    """The perfectly nested loops at the top of s: s, its body's only loop, and so on."""
    out = [s]
    while len(out[-1].body) == 1 and isinstance(out[-1].body[0], Loop):
        out.append(out[-1].body[0])
    return out


def _bind(s: Loop, shapes, local) -> Stmt | None:
    """s with its longest independent leading loops marked grid, or None if none is."""
    chain = _chain(s)
    for n in range(len(chain), 0, -1):
        if _independent(chain[:n], shapes, local):
            return _mark(s, {lp.var for lp in chain[:n]})
    return None


def _mark(s: Stmt, names: set[str]) -> Stmt:
    if isinstance(s, Loop) and s.var in names:
        return Loop(s.var, s.extent, tuple(_mark(b, names) for b in s.body), "grid")
    return s


def _independent(loops: list[Loop], shapes, local) -> bool:
    body = loops[-1].body
    ranges = {lp.var: (0, lp.extent - 1) for lp in loops}
    declared = {s.name for s in walk(body) if isinstance(s, Let)}
    writes: dict[str, dict] = {}
    for s in walk(body):
        if isinstance(s, Loop):
            ranges[s.var] = (0, s.extent - 1)
        if isinstance(s, Set) and s.name not in declared:
            return False  # a register carried from one iteration to the next
        if isinstance(s, Store) and s.buffer not in local:
            a = _address(shapes[s.buffer], s.index, ranges)
            if a is None or writes.setdefault(s.buffer, a) != a:
                return False
    for e in exprs_in(body):
        for x in e.walk():
            if isinstance(x, Scalar) and x.name not in declared:
                return False  # a register of the statements before the nest
            if isinstance(x, Load) and x.tensor in writes and (
                    _address(shapes[x.tensor], x.index, ranges) != writes[x.tensor]):
                return False  # another point's element, perhaps
    bound = {lp.var: lp.extent for lp in loops}
    return all(_distinct(a, bound, ranges) for a in writes.values())


def _address(shape: tuple[int, ...], index: tuple[Expr, ...], ranges) -> dict | None:
    """The element offset of buffer[index] as a canonical affine form, with what the loops'
    ranges settle folded (a / 25 % 1 is 0; i % 10 is i for i < 10)."""
    return affine.affine(affine.simplify_in(affine.row_major(shape, index), ranges))


def _distinct(a: dict, bound: dict[str, int], ranges) -> bool:
    """Different points of the bound loops give different values of address a: the bound
    variables appear as plain terms whose coefficients, sorted, each exceed the span of all
    smaller terms, the rest of the address (inner loops, constants) counted as the smallest."""
    rest = {k: c for k, c in a.items() if k not in bound}
    if any(not isinstance(k, str) and k != 1 and bound.keys() & free_vars(k) for k in rest):
        return False  # a bound variable inside a division or modulo
    span = affine.bounds(affine.from_affine(rest), ranges)
    if span is None:
        return False
    covered = span[1] - span[0]
    for v, c in sorted(((v, abs(c)) for v, c in a.items() if v in bound and bound[v] > 1), key=lambda t: t[1]):
        if c <= covered:
            return False
        covered += c * (bound[v] - 1)
    return all(v in a or bound[v] == 1 for v in bound)
