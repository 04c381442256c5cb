"""What the schedule needs to know of a statement: its reductions, and how its reads move with an axis."""
from __future__ import annotations

import math

from ..te import affine
from ..te.expr import Load, Reduce, Var, free_vars
from ..te.stmt import TStmt


def single_reduce(st: TStmt) -> Reduce | None:
    """The statement's one reduction, if it has exactly one and nothing nests in it."""
    reds = [x for x in st.value.walk() if isinstance(x, Reduce)]
    if len(reds) != 1 or any(isinstance(x, Reduce) for x in reds[0].body.walk() if x is not reds[0]):
        return None
    return reds[0]


def window_reduce(st: TStmt) -> tuple[Reduce, Reduce] | None:
    """(window, inner) for a pool window over a fused conv: max(p, q) f(sum(k, r, s) ...),
    a max, min or argmax whose body holds exactly one sum with nothing nested in it."""
    reds = [x for x in st.value.walk() if isinstance(x, Reduce)]
    if len(reds) != 2 or reds[0].op not in ("max", "min", "argmax") or reds[1].op != "sum":
        return None
    outer, inner = reds
    if not any(x is inner for x in outer.body.walk()):
        return None
    return outer, inner


def inner_reduce(st: TStmt) -> Reduce | None:
    """The reduction whose loops are innermost: the single one, or a window's inner sum."""
    w = window_reduce(st)
    return w[1] if w else single_reduce(st)


def stride_kind(load: Load, v: str) -> str:
    """How a read moves with axis v: 'none', 'unit' (last dimension, +1) or 'other'."""
    uses = [k for k, ix in enumerate(load.index) if v in free_vars(ix)]
    if not uses:
        return "none"
    last = len(load.index) - 1
    if uses == [last]:
        form = affine.affine(load.index[last])
        if form is not None and form.get(v) == 1 and not any(
                not isinstance(k, str) and k != 1 and v in free_vars(k) for k in form):
            return "unit"
    return "other"


def strided(load: Load, v: str) -> bool:
    """v moves only the last index of the read, by a constant stride (a pool window's conv)."""
    uses = [k for k, ix in enumerate(load.index) if v in free_vars(ix)]
    form = affine.affine(load.index[-1]) if uses == [len(load.index) - 1] else None
    return form is not None and isinstance(form.get(v), int) and all(
        isinstance(k, str) or k == 1 for k in form)


def packable(load: Load, v: str) -> bool:
    """v is one whole index of the read, not its last: a permuted copy makes it stride-1."""
    uses = [k for k, ix in enumerate(load.index) if v in free_vars(ix)]
    return len(uses) == 1 and load.index[uses[0]] == Var(v) and uses[0] != len(load.index) - 1


def across_axis(r: Reduce, hot: list[Load], W: int):
    """A reduction axis along which every read is stride-1 or constant, long enough for lanes."""
    best = None
    for w, ext_w in r.axes:
        kinds = [stride_kind(ld, w) for ld in hot]
        if ext_w >= W and "other" not in kinds and "unit" in kinds:
            best = (w, ext_w) if best is None or ext_w > best[1] else best
    return best


def axes_extent(st: TStmt, axis: str) -> int:
    return dict(st.axes)[axis]


def pack_reuse(st: TStmt, hot: list[Load], v: str) -> float:
    """How many times each element of a copy packed for lanes along v would be read: the
    extent of the output axes it does not depend on (a weight at batch 1: once)."""
    reuse = [math.prod(x for n, x in st.axes if n not in set().union(*[free_vars(i) for i in ld.index]))
             for ld in hot if packable(ld, v)]
    return min(reuse) if reuse else math.inf  # nothing to pack


def hot_loads(st: TStmt) -> list[Load]:
    r = inner_reduce(st)
    src = r.body if r is not None else st.value
    return [x for x in src.walk() if isinstance(x, Load)]


def reshape(st: TStmt, shapes: dict) -> bool:
    """st writes every element once, its index a row-major reshape of its one axis (so it can
    be tiled like a statement over the tensor's own axes)."""
    if st.index is None or st.accumulate or len(st.axes) != 1:
        return False
    flat = affine.row_major(shapes[st.tensor], st.index)
    return affine.simplify(flat) == Var(st.axes[0][0]) and st.axes[0][1] == math.prod(shapes[st.tensor])


def schedulable(st: TStmt, shapes: dict | None = None) -> bool:
    if not st.axes or (st.index is not None and not (shapes and reshape(st, shapes))):
        return False
    reds = [x for x in st.value.walk() if isinstance(x, Reduce)]
    if not reds or window_reduce(st) is not None:
        return True
    r = single_reduce(st)
    return r is not None and r.op in ("sum", "max", "min", "argmax")
