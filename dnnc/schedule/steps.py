"""Schedules as data: how each statement's loops are laid out, as printable records.

A `Tile` step says how to lower the statement that writes one tensor: one output axis runs
across the lanes of SIMD vectors (`vector`, `width` lanes, stride-1 in memory), another is
unrolled into a register tile (`unroll`, `factor` rows), and the reduction, if any, runs
outside both, accumulating into registers (a local `T.acc[factor, width]`), so each value
loaded is used `factor` or `width` times. A `Pack` step copies a tensor with its dimensions
permuted, so that a read which would stride across lanes becomes stride-1.

`default_schedule` chooses steps from shapes and the host's vector width alone, with no search.
Steps can be replayed from their text (`parse_step`), given in a `schedule { }` block, and
printed with `dnnc ir NET --stage schedule`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..te import affine
from ..base.errors import DnncError, Loc
from ..te.conv import ALGORITHMS, Algorithm
from ..te.expr import Binary, Const, Expr, Load, Reduce, Var, free_vars, substitute
from ..te.stmt import TStmt, count_flops

VECTOR_BITS = 512  # AVX-512; the lowering masks ragged edges, so any extent works
PARALLEL_FLOPS = 2_000_000  # below this a statement is not worth starting threads for (~30 us)


@dataclass(frozen=True)
class Tile:
    tensor: str
    vector: str
    width: int = 16
    unroll: str | None = None
    factor: int = 1
    nth: int = 0  # which statement writing `tensor` (gradients may have several)
    parallel: bool = False  # the outermost loop's iterations run on the thread pool
    vectors: int = 1  # vectors per row of the register tile along the vector axis
    # a reduction axis split into blocks of this many, the block loop just inside the outermost
    # output loop, so each block's data stays in cache while every output is updated from it
    block: tuple[str, int] | None = None
    # the loop over vectors runs outside the unrolled axis's loop, so the panel of a large
    # operand that one vector column reads stays in cache across all of the unrolled rows
    panel: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return self.tensor, self.nth

    def primitives(self) -> tuple:
        """This step as a composition of schedule primitives (schedule/primitives.py), in the
        order they apply: the lane split (and, with K vectors a row, its split into vectors),
        the row split, the loop order, the register tile, the reduction's blocks, the
        thread pool. Loop names are nominal; lowering makes them fresh per statement."""
        v, W, K, u = self.vector, self.width, self.vectors, self.unroll
        if K > 1:  # v -> vo * (W*K) + vl, vl -> vk * W + vi: K vectors of W lanes
            prims: list = [Split(v, W * K, inner=v + "l"), Split(v + "l", W, v + "k", v + "i"),
                           Vectorize(v + "i"), Unroll(v + "k")]
            lanes: tuple = (v + "k", v + "i")
        else:
            prims, lanes = [Split(v, W), Vectorize(v + "i")], (v + "i",)
        rows: tuple = ()
        outer: tuple = (v + "o",)
        if u:
            prims += [Split(u, self.factor), Unroll(u + "i")]
            rows = (u + "i",)
            # a panel keeps the vector loop outside the rows' loop
            outer = (v + "o", u + "o") if self.panel else (u + "o", v + "o")
        prims += [Reorder(outer + rows + lanes), Accumulate(f"{self.tensor}.acc{self.nth or ''}", rows + lanes)]
        if self.block:
            prims.append(Block(*self.block))
        if self.parallel:
            prims.append(Parallel())
        return tuple(prims)

    def __str__(self) -> str:
        u = f", unroll={self.unroll}:{self.factor}" if self.unroll else ""
        t = self.tensor + (f"#{self.nth}" if self.nth else "")
        k = f"x{self.vectors}" if self.vectors > 1 else ""
        b = f", block={self.block[0]}:{self.block[1]}" if self.block else ""
        p = ", panel" if self.panel else ""
        return f"tile({t}, vector={self.vector}:{self.width}{k}{u}{b}{p}{', parallel' if self.parallel else ''})"


@dataclass(frozen=True)
class Pack:
    tensor: str  # the tensor read
    perm: tuple[int, ...]  # new dimension k is old dimension perm[k]
    reader: str  # the statement that reads the packed copy: the nth that writes this tensor
    nth: int = 0  # (a gradient is written by several statements, each with its own reads)

    @property
    def key(self) -> tuple[str, int]:
        return self.reader, self.nth

    @property
    def packed(self) -> str:
        return f"{self.tensor}.packed{''.join(map(str, self.perm))}"

    def __str__(self) -> str:
        r = self.reader + (f"#{self.nth}" if self.nth else "")
        return f"pack({self.tensor}, perm={list(self.perm)}, for={r})"


_STEP = re.compile(r"tile\((?P<t>[\w.]+)(#(?P<n>\d+))?,\s*vector=(?P<v>\w+):(?P<w>\d+)(x(?P<k>\d+))?"
                   r"(,\s*unroll=(?P<u>\w+):(?P<f>\d+))?(,\s*block=(?P<b>\w+):(?P<bs>\d+))?(?P<panel>,\s*panel)?"
                   r"(?P<p>,\s*parallel)?\)$")


def parse_step(text: str, loc: Loc | None = None):
    """A Tile from its printed form: tile(c1.conv, vector=j:16, unroll=f:4)."""
    text = text.strip()
    n = re.match(r"naive\((?P<t>[\w.]+)\)$", text)
    if n:
        return Naive(n["t"])
    a = re.match(r"algorithm\((?P<t>[\w.]+),\s*(?P<a>\w+)\)$", text)
    if a:
        return algorithm(a["t"], a["a"], loc)
    m = _STEP.match(text)
    if not m:
        raise DnncError(f"cannot read schedule step {text!r}; expected tile(TENSOR, vector=AXIS:WIDTH"
                        f"[, unroll=AXIS:FACTOR]), naive(TENSOR) or algorithm(TENSOR, direct|im2col|winograd)", loc)
    return check(Tile(m["t"], m["v"], int(m["w"]), m["u"], int(m["f"] or 1), int(m["n"] or 0), bool(m["p"]),
                      int(m["k"] or 1), (m["b"], int(m["bs"])) if m["b"] else None, bool(m["panel"])), loc)


def from_settings(settings: dict) -> list:
    """Tile steps from a network's `schedule { T = tile(vector=j, width=16, unroll=f, factor=4) }`
    block; `T = naive` keeps T's plain loop nest."""
    from ..front.parse import CallValue, NameRef
from .primitives import Accumulate, Block, Parallel, Reorder, Split, Unroll, Vectorize

    out: list = []
    for key, (value, loc) in settings.items():
        if not key.startswith("schedule."):
            continue
        tensor = key[len("schedule."):]
        if isinstance(value, NameRef) and value.name == "naive":
            out.append(Naive(tensor))
            continue
        if isinstance(value, NameRef) and value.name in ALGORITHMS:
            out.append(Algorithm(tensor, value.name))
            continue
        if not (isinstance(value, CallValue) and value.name == "tile"):
            raise DnncError("a schedule entry is T = tile(vector=AXIS, width=N, unroll=AXIS, factor=N), "
                            "T = naive, or T = direct|im2col|winograd", loc)
        kw: dict = {}
        for a in value.args:
            if a.key in ("vector", "unroll") and isinstance(a.value, NameRef):
                kw[a.key] = a.value.name
            elif a.key in ("width", "factor") and isinstance(a.value, int) and a.value >= 1:
                kw[a.key] = a.value
            elif a.key == "parallel" and a.value in (0, 1):
                kw[a.key] = bool(a.value)
            else:
                raise DnncError(f"tile(...) takes vector=AXIS, width=N, unroll=AXIS, factor=N, parallel=0|1; got "
                                f"{a.key or 'a positional argument'}", a.loc)
        if "vector" not in kw:
            raise DnncError("tile(...) needs vector=AXIS", loc)
        out.append(check(Tile(tensor, kw["vector"], kw.get("width", 16), kw.get("unroll"),
                              kw.get("factor", 1) if kw.get("unroll") else 1, 0, kw.get("parallel", False)), loc))
    return out


@dataclass(frozen=True)
class Naive:
    """Keep the plain loop nest of the statement(s) writing `tensor`."""

    tensor: str

    def __str__(self) -> str:
        return f"naive({self.tensor})"


def check(t: Tile, loc: Loc | None = None) -> Tile:
    if t.width not in (1, 2, 4, 8, 16, 32, 64):
        raise DnncError(f"{t}: the vector width must be a power of two up to 64", loc)
    if t.factor > 16:
        raise DnncError(f"{t}: an unroll factor above 16 would spill the register tile", loc)
    if t.unroll == t.vector:
        raise DnncError(f"{t}: the vector and unrolled axes must differ", loc)
    return t


def merge(defaults: list, overrides: list) -> list:
    """The default steps with each tensor's steps replaced by the user's (an algorithm step
    replaces only the tensor's algorithm)."""
    named = {o.tensor for o in overrides if isinstance(o, (Tile, Naive))}
    algos = {o.tensor for o in overrides if isinstance(o, Algorithm)}
    return [d for d in defaults if not (isinstance(d, (Tile, Naive)) and d.tensor in named)
            and not (isinstance(d, Algorithm) and d.tensor in algos)] + [
        o for o in overrides if isinstance(o, (Tile, Algorithm))]


def algorithm(tensor: str, name: str, loc: Loc | None = None) -> Algorithm:
    if name not in ALGORITHMS:
        raise DnncError(f"unknown convolution algorithm '{name}'; expected one of {', '.join(ALGORITHMS)}", loc)
    return Algorithm(tensor, name)


def lanes(dtype: str = "f32") -> int:
    return VECTOR_BITS // (32 if dtype == "f32" else 64)


# ----------------------------------------------------------------------------- analysis

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


def _stride_kind(load: Load, v: str) -> str:
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


def _strided(load: Load, v: str) -> bool:
    """v moves only the last index of the read, by a constant stride (a pool window's conv)."""
    uses = [k for k, ix in enumerate(load.index) if v in free_vars(ix)]
    form = affine.affine(load.index[-1]) if uses == [len(load.index) - 1] else None
    return form is not None and isinstance(form.get(v), int) and all(
        isinstance(k, str) or k == 1 for k in form)


def _packable(load: Load, v: str) -> bool:
    """v is one whole index of the read, not its last: a permuted copy makes it stride-1."""
    uses = [k for k, ix in enumerate(load.index) if v in free_vars(ix)]
    return len(uses) == 1 and load.index[uses[0]] == Var(v) and uses[0] != len(load.index) - 1


def _across_axis(r: Reduce, hot: list[Load], W: int):
    """A reduction axis along which every read is stride-1 or constant, long enough for lanes."""
    best = None
    for w, ext_w in r.axes:
        kinds = [_stride_kind(ld, w) for ld in hot]
        if ext_w >= W and "other" not in kinds and "unit" in kinds:
            best = (w, ext_w) if best is None or ext_w > best[1] else best
    return best


L2_BYTES = 1 << 20  # this machine's L2 per core; an operand larger than it is read in panels


def axes_extent(st: TStmt, axis: str) -> int:
    return dict(st.axes)[axis]


MIN_PACK_REUSE = 8  # a packed copy read fewer times than this costs more than it saves


def _pack_reuse(st: TStmt, hot: list[Load], v: str) -> int:
    """How many times each element of a copy packed for lanes along v would be read: the
    extent of the output axes it does not depend on (a weight at batch 1: once)."""
    reuse = [math.prod(x for n, x in st.axes if n not in set().union(*[free_vars(i) for i in ld.index]))
             for ld in hot if _packable(ld, v)]
    return min(reuse) if reuse else MIN_PACK_REUSE


BLOCK_TERMS = 1 << 14  # a reduction longer than this streams more than L1 holds per output


def _block(st: TStmt, r: Reduce, lanes: str) -> tuple[str, int] | None:
    """For a long reduction that is the whole statement (a weight gradient): blocks of 8 along
    its longest other axis, so the rows of one block are reused from cache by every output."""
    if st.value is not r or st.accumulate or math.prod(x for _, x in r.axes) < BLOCK_TERMS:
        return None
    axis, ext = max(((n, x) for n, x in r.axes if n != lanes), key=lambda a: a[1], default=(None, 0))
    return (axis, 8) if ext >= 32 else None


def _hot_loads(st: TStmt) -> list[Load]:
    r = inner_reduce(st)
    src = r.body if r is not None else st.value
    return [x for x in src.walk() if isinstance(x, Load)]


def reshape(st: TStmt, shapes: dict) -> bool:
    """st writes every element once, its index a row-major reshape of its one axis (so it can
    be tiled like a statement over the tensor's own axes)."""
    if st.index is None or st.accumulate or len(st.axes) != 1:
        return False
    flat: Expr = Const(0)
    for ix, x in zip(st.index, shapes[st.tensor], strict=True):
        flat = Binary("+", Binary("*", flat, Const(x)), ix)
    return affine.simplify(flat) == Var(st.axes[0][0]) and st.axes[0][1] == math.prod(shapes[st.tensor])


def schedulable(st: TStmt, shapes: dict | None = None) -> bool:
    if not st.axes or (st.index is not None and not (shapes and reshape(st, shapes))):
        return False
    reds = [x for x in st.value.walk() if isinstance(x, Reduce)]
    if not reds or window_reduce(st) is not None:
        return True
    r = single_reduce(st)
    return r is not None and r.op in ("sum", "max", "min", "argmax")


def default_schedule(stmts: list[TStmt], shapes: dict[str, tuple[int, ...]], dtype: str = "f32",
                     pack: bool = True) -> list:
    """Tile (and Pack) steps for the statements worth vectorizing, from shapes alone."""
    steps: list = []
    W = lanes(dtype)
    packed: set[tuple[str, str]] = set()
    seen: dict[str, int] = {}
    for st in stmts:
        nth = seen.get(st.tensor, 0)
        seen[st.tensor] = nth + 1
        if not schedulable(st, shapes):
            continue
        v, ext_v = st.axes[-1]
        hot = _hot_loads(st)
        window = window_reduce(st) is not None
        r = inner_reduce(st)
        if pack and r is not None and ext_v <= W // 2 and (window or (
                math.prod(x for _, x in r.axes) >= 1024 and not _across_axis(r, hot, W))):
            # a short last axis and no reduction axis to put lanes on: lanes on an output axis
            # that fills whole vectors, its reads packed (a conv's weight gradient along
            # filters; a fused conv+pool whose pooled rows are short)
            cands = [(sum(math.prod(shapes[ld.tensor]) for ld in hot if _packable(ld, n)), k, n, x)
                     for k, (n, x) in enumerate(st.axes[:-1])
                     if x >= W and x % W == 0 and any(_packable(ld, n) for ld in hot)
                     and all(_stride_kind(ld, n) in ("none", "unit") or _packable(ld, n) for ld in hot)]
            if cands:  # the axis whose packed copies are smallest (weights rather than activations)
                _, _, v, ext_v = min(cands)
        if (not window and r is not None and r.op in ("sum", "max", "min") and _across_axis(r, hot, W)
                and (ext_v <= W // 2 or _pack_reuse(st, hot, v) < MIN_PACK_REUSE)):
            # a short output axis (a kernel's width): put the lanes on a reduction axis along
            # which every read is contiguous, and the short axis in a register tile
            w, ext_w = _across_axis(r, hot, W)
            steps.append(Tile(st.tensor, w, W, v if ext_v > 1 else None, min(ext_v, 8) if ext_v > 1 else 1,
                              nth, count_flops(st) >= PARALLEL_FLOPS, 1, _block(st, r, w)))
            continue
        if pack and r is not None:
            for ld in hot:  # a read across lanes: pack it so the lanes are contiguous
                if _packable(ld, v) and (st.tensor, ld.tensor) not in packed:
                    d = next(k for k, ix in enumerate(ld.index) if ix == Var(v))
                    perm = tuple(k for k in range(len(ld.index)) if k != d) + (d,)
                    steps.append(Pack(ld.tensor, perm, st.tensor, nth))
                    packed.add((st.tensor, ld.tensor))
        width = W if ext_v > W // 2 else max(4, W // 2 if ext_v > W // 4 else W // 4)
        unroll, factor = None, 1
        if r is not None:
            best = None
            for u, ext_u in st.axes:
                if ext_u < 2 or u == v:
                    continue
                reuse = sum(1 for ld in hot if (_stride_kind(ld, v) == "unit" or (st.tensor, ld.tensor) in packed
                                                or (window and _strided(ld, v)))
                            and u not in set().union(*[free_vars(i) for i in ld.index]))
                key = (reuse, ext_u)
                if reuse and (best is None or key > best[0]):  # unrolling without reuse only adds code
                    best = (key, u, ext_u)
            # vectors per row (1, 2 or 4): the most that waste at most one vector of masked lanes
            # beyond what one vector at a time would (a short row, like LeNet's 28 pixels, gets 1)
            least = -(-ext_v // width) * width
            vectors = max((k for k in (1, 2, 4) if -(-ext_v // (width * k)) * width * k <= least + width),
                          default=1) if width == W and ext_v >= 3 * W else 1
            if best is not None:
                unroll = best[1]
                ext_u = best[2]
                # a register tile of at most 16 accumulators (AVX-512 has 32 registers); a pool
                # window also keeps its running maximum and argmax in registers
                cap = 12 if window else 16
                fits = [f for f in (8, 6, 4, 3, 2) if f * vectors <= cap and f <= ext_u]
                factor = next((f for f in fits if ext_u % f == 0), fits[0] if fits else 1)
        else:
            vectors = 1
        panel = unroll is not None and axes_extent(st, unroll) > factor and any(
            unroll not in set().union(*[free_vars(i) for i in ld.index]) and math.prod(shapes[ld.tensor]) * 4 > L2_BYTES
            for ld in hot if _stride_kind(ld, v) == "unit" or (st.tensor, ld.tensor) in packed)
        steps.append(Tile(st.tensor, v, width, unroll, factor, nth, count_flops(st) >= PARALLEL_FLOPS, vectors,
                          None, panel))
    return steps


# ----------------------------------------------------------------------------- packing

def apply_packs(stmts: list[TStmt], steps: list, shapes: dict,
                seen: dict[str, int] | None = None) -> tuple[list[TStmt], list[tuple[str, tuple]]]:
    """Statements that read packed copies; the copies are computed right before first use.

    Invariant: computes the same values (a packed copy is a permutation of its tensor).
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
                axes = tuple((f"p{k}", x) for k, x in enumerate(new_shape))
                inv = [0] * len(p.perm)
                for k, old in enumerate(p.perm):
                    inv[old] = k
                src = Load(t, tuple(Var(f"p{inv[d]}") for d in range(len(shape))))
                out.append(TStmt(p.packed, axes, src, st.loc))
                temps.append((p.packed, new_shape))
                done.add(p.packed)

        def repl(x, mine=mine):
            if isinstance(x, Load) and x.tensor in mine:
                p = mine[x.tensor]
                return Load(p.packed, tuple(x.index[k] for k in p.perm), x.loc)
            return None

        out.append(TStmt(st.tensor, st.axes, substitute(st.value, repl), st.loc, st.index, st.accumulate))
    return out, temps
