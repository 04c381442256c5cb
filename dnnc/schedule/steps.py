"""Schedules as data: how each statement's loops are laid out, as printable records.

A `Tile` step says how to lower the statement that writes one tensor: one output axis runs
across the lanes of SIMD vectors (`vector`, `width` lanes, stride-1 in memory), another is
unrolled into a register tile (`unroll`, `factor` rows), and the reduction, if any, runs
outside both, accumulating into registers (a local `T.acc[factor, width]`), so each value
loaded is used `factor` or `width` times. A `Pack` step copies a tensor with its dimensions
permuted, so that a read which would stride across lanes becomes stride-1.

The target's default schedule (schedule/default.py) fills in the statements the user's steps
leave; `Schedule` holds the user's steps, merged with the defaults in one place (the driver's
`schedule` stage). Steps can be replayed from their text (`parse_step`), given in a
`schedule { }` block, and printed with `dnnc ir NET --stage schedule`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..base.errors import DnncError, Loc
from ..te.conv import ALGORITHMS, Algorithm
from ..front.parse import CallValue, NameRef
from ..front.settings import AXIS, keyword_args
from .primitives import Accumulate, Block, Parallel, Reorder, Split, Unroll, Vectorize



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
    # the loop over vectors runs outside every other output loop (`reorder(fo, ..., jo, ...)`),
    # so one panel of packed weights stays in cache while every output pixel is computed
    outermost: bool = False

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
        if self.outermost:  # `...`: the statement's other output axes, inside the vector loop
            outer = (v + "o", "...") + ((u + "o",) if u else ())
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
        o = ", outermost" if self.outermost else ""
        return f"tile({t}, vector={self.vector}:{self.width}{k}{u}{b}{p}{o}{', parallel' if self.parallel else ''})"


@dataclass(frozen=True)
class Pack:
    tensor: str  # the tensor read
    perm: tuple[int, ...]  # new dimension k is old dimension perm[k]
    reader: str  # the statement that reads the packed copy: the nth that writes this tensor
    nth: int = 0  # (a gradient is written by several statements, each with its own reads)
    # the last (lane) dimension cut into panels of this many, each panel contiguous:
    # [D / block, ..., block], so a register tile's vectors of one panel lie together
    block: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return self.reader, self.nth

    @property
    def packed(self) -> str:
        return f"{self.tensor}.packed{''.join(map(str, self.perm))}" + (f"b{self.block}" if self.block else "")

    def __str__(self) -> str:
        r = self.reader + (f"#{self.nth}" if self.nth else "")
        b = f", block={self.block}" if self.block else ""
        return f"pack({self.tensor}, perm={list(self.perm)}{b}, for={r})"


_STEP = re.compile(r"tile\((?P<t>[\w.]+)(#(?P<n>\d+))?,\s*vector=(?P<v>\w+):(?P<w>\d+)(x(?P<k>\d+))?"
                   r"(,\s*unroll=(?P<u>\w+):(?P<f>\d+))?(,\s*block=(?P<b>\w+):(?P<bs>\d+))?(?P<panel>,\s*panel)?"
                   r"(?P<outer>,\s*outermost)?(?P<p>,\s*parallel)?\)$")


def parse_step(text: str, loc: Loc | None = None):
    """A step from its printed form: tile(c1.conv, vector=j:16, unroll=f:4), naive(T) or
    algorithm(T, winograd); a trailing ` # comment` (how `dnnc ir` shows a Tile's primitives)
    is ignored."""
    text = re.sub(r"\s+#\s.*$", "", text.strip())
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
                      int(m["k"] or 1), (m["b"], int(m["bs"])) if m["b"] else None, bool(m["panel"]),
                      bool(m["outer"])), loc)


def from_block(block: dict) -> list:
    """The steps of a network's `schedule { T = tile(vector=j, width=16, unroll=f, factor=4) }`
    block (tensor -> (value, location)); `T = naive` keeps T's plain loop nest."""
    out: list = []
    for tensor, (value, loc) in block.items():
        if isinstance(value, NameRef) and value.name == "naive":
            out.append(Naive(tensor))
            continue
        if isinstance(value, NameRef) and value.name in ALGORITHMS:
            out.append(Algorithm(tensor, value.name))
            continue
        if not (isinstance(value, CallValue) and value.name == "tile"):
            raise DnncError("a schedule entry is T = tile(vector=AXIS, width=N, unroll=AXIS, factor=N), "
                            "T = naive, or T = direct|im2col|winograd", loc)
        kw = keyword_args(value, {"vector": AXIS, "width": int, "unroll": AXIS, "factor": int, "parallel": bool},
                          "vector=AXIS, width=N, unroll=AXIS, factor=N, parallel=0|1")
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
    if t.outermost and t.panel:
        raise DnncError(f"{t}: outermost already keeps the vector loop outside the rows' loop; drop panel", loc)
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


@dataclass(frozen=True)
class Schedule:
    """The one schedule of a compilation, from the `.net` file and the command line to its use.

    `steps` are the user's, from `--schedule` flags or the API, in order; the driver's `te`
    stage puts the network's `schedule { }` block before them (a later step for a tensor
    wins). With `defaults` the target's default schedule
    and algorithms fill in every statement the user's steps leave, and the tensor-expression
    fusions run; without (`--no-schedule`) statements keep plain loop nests, unfused.
    """

    steps: tuple = ()
    defaults: bool = True

    def key(self) -> list:
        """What a cache key needs of it."""
        return [self.defaults] + [str(s) for s in self.steps]

    def __str__(self) -> str:
        return "\n".join(map(str, self.steps)) or ("(defaults)" if self.defaults else "(none)")


def as_schedule(schedule) -> Schedule:
    """A Schedule from what the API accepts: a Schedule, True (the defaults), False (plain
    loop nests), or a list of steps or their printed forms over the defaults."""
    if isinstance(schedule, Schedule):
        return schedule
    if schedule is True or schedule is False:
        return Schedule((), schedule)
    return Schedule(tuple(parse_step(s) if isinstance(s, str) else s for s in schedule))
