"""Access analysis: how the lanes of a vector loop touch a buffer, decided before any code is emitted.

Inside `vector for v in 0..W` every read and write buf[index] is classified by how its element
offset moves with v. The classification picks the memory operation, so it is made once, from
the index alone, and returned as a value the emitter acts on:

- scalar: the offset does not depend on v (or there is no vector loop): one element, broadcast.
- contiguous: the offset moves by one element per lane: one vector load or store.
- strided(s): it moves by a small stride s (2 to 4): one load of W * s elements, then every
  s-th; cheaper than a gather for the strided reads of convolutions and pooling.
- repeated(s, k): v enters only as (v + k) / s, so runs of s lanes share an element (a pooling
  gradient's t / 2): one short load, then a shuffle that repeats each element.
- gather: anything else: one address per lane.

Strided and repeated are shapes of reads; a write of that shape is a scatter.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..te import affine
from ..te.expr import Binary, Const, Expr, free_vars

SMALL_STRIDES = (2, 3, 4)


@dataclass(frozen=True)
class Access:
    kind: str  # scalar | contiguous | strided | repeated | gather
    linear: Expr  # the element offset of buf[index], per lane
    start: Expr  # the element a scalar access touches, or lane 0's (unused by a gather)
    stride: int = 1  # strided: elements between lanes
    repeat: tuple[int, int] | None = None  # repeated (s, k): lane i touches start + (i + k) // s


def linear_offset(shape: tuple[int, ...], index) -> Expr:
    """The element offset of index in a row-major buffer of this shape, as one integer expression."""
    return affine.simplify(affine.row_major(shape, index), split=True)


@lru_cache(maxsize=1 << 14)
def access_kind(shape: tuple[int, ...], index: tuple, vector_var: str | None) -> Access:
    """How buf[index] is accessed in the vector loop over vector_var (None: outside any).
    Memoized: an unrolled tile emits the same access once per copy of its body."""
    lin = linear_offset(shape, index)
    if vector_var is None:
        return Access("scalar", lin, lin)
    v = vector_var
    form = affine.affine(lin, split=True)
    # v inside a nonlinear atom (a division, a modulo) rules out a fixed stride
    atoms_use_v = form is None or any(not isinstance(t, str) and t != 1 and v in free_vars(t) for t in form)
    coef = 0 if form is None else form.get(v, 0)
    if not atoms_use_v and coef == 0:
        return Access("scalar", lin, lin)
    if not atoms_use_v and coef in (1, *SMALL_STRIDES):
        lane0 = _without(form, v)
        if coef == 1:
            return Access("contiguous", lin, lane0)
        return Access("strided", lin, lane0, stride=coef)
    rep = _repeat(form, v) if form is not None and coef == 0 else None
    if rep is not None:
        atom, s, k = rep
        return Access("repeated", lin, _without(form, atom), repeat=(s, k))
    return Access("gather", lin, lin)


def _without(form: dict, term) -> Expr:
    """The affine form with one term dropped, as an expression: the offset of lane 0."""
    return affine.simplify(affine.from_affine({t: c for t, c in form.items() if t != term}))


def _repeat(form: dict, v: str):
    """(atom, s, k) when v enters the offset only as the atom (v + k) / s, 0 <= k < s."""
    found = [t for t in form if not isinstance(t, str) and t != 1 and v in free_vars(t)]
    if len(found) != 1 or form[found[0]] != 1:
        return None
    atom = found[0]
    if not (isinstance(atom, Binary) and atom.op == "/" and isinstance(atom.b, Const) and atom.b.value > 1):
        return None
    inner = affine.affine(atom.a)
    if inner is None or set(inner) - {v, 1} or inner.get(v) != 1 or not 0 <= inner.get(1, 0) < atom.b.value:
        return None
    return atom, atom.b.value, inner.get(1, 0)
