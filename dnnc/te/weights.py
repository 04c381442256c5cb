"""Weight-only statements: what a forward pass computes from its parameters alone.

A folded batchnorm's weights, Winograd's filter transform and a packed copy of a weight
depend on nothing an input changes. The `weights` stage moves them into a program of their
own (the model's `prepare` program) that runs when the weights change, not on every call;
the tensors they write become `derived` buffers, kept between calls like parameters.
"""
from __future__ import annotations

from .expr import Load
from .stmt import TStmt


def _reads(st: TStmt) -> set[str]:
    return {x.tensor for x in st.value.walk() if isinstance(x, Load)}


def weight_only(groups, base: set[str]) -> set[str]:
    """The tensors whose every value follows from `base` (parameters, running statistics):
    base, and every tensor all of whose writers read only such tensors."""
    writers: dict[str, list[TStmt]] = {}
    for _, stmts in groups:
        for st in stmts:
            writers.setdefault(st.tensor, []).append(st)
    known = set(base)
    changed = True
    while changed:
        changed = False
        for t, sts in writers.items():
            if t not in known and all(_reads(st) <= known for st in sts):
                known.add(t)
                changed = True
    return known


def split_weights(groups, base: set[str], keep: set[str]) -> tuple[list, list, set[str]]:
    """(the groups without their weight-only statements, those statements in groups of the same
    names, the tensors they write). A kept tensor (an output) stays where it is.

    Invariant: running the second list, then the first, computes what `groups` computes; the
    second reads only `base` and what it writes itself."""
    derived = weight_only(groups, base) - set(base) - set(keep)
    rest, prepare = [], []
    for name, stmts in groups:
        mine = [st for st in stmts if st.tensor not in derived]
        hoisted = [st for st in stmts if st.tensor in derived]
        if mine:
            rest.append((name, mine))
        if hoisted:
            prepare.append((name, hoisted))
    return rest, prepare, derived
