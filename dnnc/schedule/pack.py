"""Pack steps applied to tensor expressions: a read across lanes becomes a read of a permuted copy."""
from __future__ import annotations

from ..te.expr import Binary, Const, Load, Var, substitute
from ..te.stmt import TStmt
from .steps import Pack


def apply_packs(stmts: list[TStmt], steps: list, shapes: dict,
                seen: dict[str, int] | None = None) -> tuple[list[TStmt], list[tuple[str, tuple]]]:
    """Statements that read packed copies; the copies are computed right before first use.

    Invariant: computes the same values (a packed copy is a permutation of its tensor, its
    last dimension cut into contiguous panels when the step says `block`).
    `seen` counts the statements that wrote each tensor in earlier groups, so a pack for the
    nth writer of a tensor finds it; it is updated.
    """
    seen = {} if seen is None else seen
    packs: dict[tuple[str, int], dict[str, Pack]] = {}
    for s in steps:
        if isinstance(s, Pack):
            packs.setdefault(s.key, {})[s.tensor] = s
    if not packs:
        return stmts, []
    out: list[TStmt] = []
    temps: list[tuple[str, tuple]] = []
    done: set[str] = set()
    for st in stmts:
        nth = seen.get(st.tensor, 0)
        seen[st.tensor] = nth + 1
        mine = packs.get((st.tensor, nth), {})
        if not mine:
            out.append(st)
            continue
        for t, p in mine.items():
            if p.packed not in done:
                shape = shapes[t]
                new_shape = tuple(shape[k] for k in p.perm)
                inv = [0] * len(p.perm)
                for k, old in enumerate(p.perm):
                    inv[old] = k
                index = [Var(f"p{inv[d]}") for d in range(len(shape))]
                if p.block:  # [D / B, ..., B]: the lane dimension's panel first, its offset last
                    B, last = p.block, len(new_shape) - 1
                    new_shape = (new_shape[-1] // B,) + new_shape[:-1] + (B,)
                    index = [Var(f"p{k + 1}") for k in inv]
                    index[p.perm[-1]] = Binary("+", Binary("*", Var("p0"), Const(B)), Var(f"p{last + 1}"))
                axes = tuple((f"p{k}", x) for k, x in enumerate(new_shape))
                src = Load(t, tuple(index))
                out.append(TStmt(p.packed, axes, src, st.loc))
                temps.append((p.packed, new_shape))
                done.add(p.packed)

        def repl(x, mine=mine):
            if isinstance(x, Load) and x.tensor in mine:
                p = mine[x.tensor]
                index = tuple(x.index[k] for k in p.perm)
                if p.block:
                    lane, B = index[-1], Const(p.block)
                    index = (Binary("/", lane, B),) + index[:-1] + (Binary("%", lane, B),)
                return Load(p.packed, index, x.loc)
            return None

        out.append(TStmt(st.tensor, st.axes, substitute(st.value, repl), st.loc, st.index, st.accumulate))
    return out, temps
