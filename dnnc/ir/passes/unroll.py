"""Folds unrolled: a GPU thread's long, narrow reduction loop issues UNROLL loads at once.

A thread summing a channel's values (a batchnorm's statistics and gradients, the partials
of ir/passes/rfactor.py) runs a loop of one load and one add. Each add needs the previous
sum, and LLVM's NVPTX backend does not unroll such a loop, so each iteration waits for its
own load: about half a microsecond from memory, 400 us for a loop of 800. Strip-mined by
UNROLL with the inner loop unrolled, the loads of UNROLL iterations do not depend on the
sums and are issued together; the adds still happen one after another, in the same order.
"""
from __future__ import annotations

from ...te.expr import Binary, Const, Var, subst_vars
from .. import If, Kernel, Loop, Program, Set, map_exprs, rewrite, walk
from .folds import fresh

UNROLL = 8


def unroll_folds(p: Program) -> Program:
    """Invariant: computes what p computes, every register folding the same terms in the same
    order. A serial loop of at least 2 * UNROLL iterations whose body only updates registers
    (Set statements, perhaps under guards) becomes `for o: unroll for i: body at o * UNROLL + i`
    and a serial loop over the remaining iterations."""
    return p.replace_kernels(Kernel(k.name, rewrite(k.body, _unroll), k.layer) for k in p.kernels)


def _unroll(lp: Loop, ranges, entries) -> list:
    if lp.kind != "serial" or lp.extent < 2 * UNROLL or not _folds_only(lp.body):
        return [lp]
    used = {s.var for s in walk(lp.body) if isinstance(s, Loop)} | set(ranges) | {lp.var}
    o, i = fresh(lp.var + "o", used), fresh(lp.var + "i", used)
    whole = lp.extent // UNROLL
    at = Binary("+", Binary("*", Var(o), Const(UNROLL)), Var(i))
    out = [Loop(o, whole, (Loop(i, UNROLL, _at(lp, at), "unroll"),))]
    if lp.extent % UNROLL:
        r = fresh(lp.var + "r", used)
        out.append(Loop(r, lp.extent % UNROLL, _at(lp, Binary("+", Var(r), Const(whole * UNROLL)))))
    return out


def _at(lp: Loop, index) -> tuple:
    return map_exprs(lp.body, lambda e: subst_vars(e, {lp.var: index}))


def _folds_only(body) -> bool:
    return bool(body) and all(isinstance(s, Set) or (isinstance(s, If) and _folds_only(s.then + s.orelse))
                              for s in body)
