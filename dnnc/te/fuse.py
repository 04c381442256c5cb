"""Fusion of elementwise statements into their producer (inference programs).

Copies go first: `T[I] = S[I]` of a tensor nothing writes (an inference batchnorm's running
statistics) is dropped and T's readers read S, so that the statement after it can fuse.

`T2[I] = f(T1[I])` right after `T1[J] = e` over the same domain, where T1 is read by nothing
else and is not an output, becomes `T2[J] = f(e)`: a ReLU computed in the epilogue of the
convolution that feeds it, with no full-size intermediate written and read back.
"""
from __future__ import annotations

from .expr import Load, Reduce, Var, subst_vars, substitute
from .stmt import TStmt


def _reads(st: TStmt) -> list[Load]:
    return [x for x in st.value.walk() if isinstance(x, Load)]


def reader_counts(groups) -> dict[str, int]:
    """How many statements read each tensor."""
    out: dict[str, int] = {}
    for _, stmts in groups:
        for st in stmts:
            for t in {x.tensor for x in _reads(st)}:
                out[t] = out.get(t, 0) + 1
    return out


def fuse_elementwise(groups: list[tuple[str, list[TStmt]]], keep: set[str]) -> list[tuple[str, list[TStmt]]]:
    """Invariant: computes the same values for every tensor in `keep` (the outputs).

    The fused statement takes the producer's kernel; the consumer's kernel disappears.
    """
    readers = reader_counts(groups)
    out: list[tuple[str, list[TStmt]]] = []
    for name, stmts in groups:
        mine: list[TStmt] = []
        for st in stmts:
            prev = mine if mine else (out[-1][1] if out and out[-1][1] else None)
            if prev is not None and _fusable(prev[-1], st, readers, keep):
                producer = prev[-1]
                rename = {n: Var(m) for (n, _), (m, _) in zip(st.axes, producer.axes, strict=True)}
                value = substitute(subst_vars(st.value, rename),
                                   lambda x: producer.value if isinstance(x, Load) and x.tensor == producer.tensor
                                   else None)
                prev[-1] = TStmt(st.tensor, producer.axes, value, producer.loc)
                if prev is not mine:
                    out[-1] = (f"{out[-1][0]}+{name.split('.')[-1]}", prev)
                continue
            mine.append(st)
        if mine:
            out.append((name, mine))
    return out


def _fusable(producer: TStmt, consumer: TStmt, readers: dict, keep: set[str]) -> bool:
    if producer.index is not None or producer.accumulate or consumer.index is not None or consumer.accumulate:
        return False
    if producer.tensor in keep or readers.get(producer.tensor, 0) != 1:
        return False
    if [x for _, x in producer.axes] != [x for _, x in consumer.axes]:
        return False
    if any(isinstance(x, Reduce) for x in consumer.value.walk()):
        return False
    reads = _reads(consumer)
    own = [x for x in reads if x.tensor == producer.tensor]
    identity = tuple(Var(n) for n, _ in consumer.axes)
    return bool(own) and all(x.index == identity for x in own)


def propagate_copies(groups: list[tuple[str, list[TStmt]]], keep: set[str]) -> list[tuple[str, list[TStmt]]]:
    """Invariant: computes the same values for every tensor in `keep`.

    `T[I] = S[I]`, T written by this statement alone and not kept, S written by no statement
    (a parameter, a running statistic, an input), is dropped; every read of T reads S at the
    same index. A group left empty disappears."""
    writers: dict[str, int] = {}
    for _, stmts in groups:
        for st in stmts:
            writers[st.tensor] = writers.get(st.tensor, 0) + 1
    copies: dict[str, str] = {}
    for _, stmts in groups:
        for st in stmts:
            v = st.value
            if (isinstance(v, Load) and st.index is None and not st.accumulate and st.tensor not in keep
                    and writers[st.tensor] == 1 and v.tensor not in writers
                    and v.index == tuple(Var(n) for n, _ in st.axes)):
                copies[st.tensor] = v.tensor
    if not copies:
        return groups

    def read_source(x):
        if isinstance(x, Load) and x.tensor in copies:
            return Load(copies[x.tensor], x.index, x.loc)
        return None

    out = []
    for name, stmts in groups:
        kept = [TStmt(st.tensor, st.axes, substitute(st.value, read_source), st.loc, st.index, st.accumulate)
                for st in stmts if st.tensor not in copies]
        if kept:
            out.append((name, kept))
    return out
