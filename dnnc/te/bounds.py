"""Which reads of an expression may fall outside their tensors, from the ranges of its variables.

One walk (`_index_spans`) finds every read outside inner reductions with the facts its
enclosing selects establish, and one rule (`_outside`) decides whether an index may leave
its dimension. Instantiation turns a possible escape into an error (`check_bounds`);
lowering and autodiff turn it into a guard (`read_guards`).
"""
from __future__ import annotations

from typing import Iterator

from . import affine
from ..base.errors import DnncError
from .expr import Binary, Const, Expr, Load, Reduce, Select, show
from .stmt import TStmt


def _reads(e: Expr, ranges: dict, facts: dict) -> Iterator[tuple[Load, dict]]:
    """(read, facts under which it happens) for every read in e outside inner reductions.

    An inner reduction is skipped: a read inside it that falls outside its tensor contributes
    nothing, so the reduction guards its own reads. The order is the expression's, a select's
    condition before its branches.
    """
    if isinstance(e, Reduce):
        return
    if isinstance(e, Select):
        yield from _reads(e.cond, ranges, facts)
        yield from _reads(e.a, ranges, affine.facts_from(e.cond, ranges, facts))
        yield from _reads(e.b, ranges, affine.facts_from(e.cond, ranges, facts, negate=True))
        return
    if isinstance(e, Load):
        yield e, facts
    for c in e.children():
        yield from _reads(c, ranges, facts)


def _index_spans(body: Expr, ranges: dict, facts: dict, shapes: dict):
    """(read, dimension, index, size, span) for each index of each read of `_reads`; span is
    the index's (lo, hi) under the ranges and facts, or None where they do not bound it."""
    for load, known in _reads(body, ranges, facts):
        shape = shapes[load.tensor]
        for k, ix in enumerate(load.index):
            yield load, k, ix, shape[k], affine.bounds(ix, ranges, known)


def _outside(span, size: int) -> tuple[bool, bool]:
    """(may be below 0, may be above size - 1) for an index spanning `span` (None: unknown)."""
    if span is None:
        return True, True
    return span[0] < 0, span[1] > size - 1


def read_guards(body: Expr, ranges: dict, facts: dict, shapes: dict) -> list[Expr]:
    """Conditions under which every read in body (outside inner reductions) is in range.

    Only the comparisons that the ranges and facts do not already prove are returned, each
    once, in the order of the reads.
    """
    out: list[Expr] = []
    for _, _, ix, size, span in _index_spans(body, ranges, facts, shapes):
        below, above = _outside(span, size)
        if below:
            c = Binary(">=", ix, Const(0))
            if c not in out:
                out.append(c)
        if above:
            c = Binary("<", ix, Const(size))
            if c not in out:
                out.append(c)
    return out


def check_bounds(stmt: TStmt, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every read outside a reduction must be provably in range (under select conditions);
    the first that is not raises DnncError.

    Reads inside a reduction may fall outside their tensor: they contribute nothing.
    """
    ranges = {n: (0, x - 1) for n, x in stmt.axes}
    for load, k, ix, size, span in _index_spans(stmt.value, ranges, {}, shapes):
        where = load.loc or stmt.loc
        if span is None:
            raise DnncError(f"index {show(ix)} of {load.tensor} cannot be proven in range: its bounds are "
                            f"unknown (dimension {k} has size {size}); use select(...) or a reduction, "
                            f"which skips reads outside", where)
        if any(_outside(span, size)):
            raise DnncError(f"index {show(ix)} of {load.tensor} may be out of range: it spans "
                            f"[{span[0]}, {span[1]}] but dimension {k} has size {size}", where)
