"""The default schedule: Tile and Pack steps chosen from shapes and the machine model, with no search."""
from __future__ import annotations

import math
from dataclasses import replace

from ..te.expr import Reduce, Var, free_vars
from ..te.stmt import TStmt, count_flops
from .analysis import (across_axis, axes_extent, hot_loads, inner_reduce, pack_reuse, packable, schedulable,
                       stride_kind, strided, window_reduce)
from .machine import Machine
from .steps import Pack, Tile

MIN_PACK_REUSE = 8  # a packed copy read fewer times than this costs more than it saves
BLOCK_TERMS = 1 << 14  # a reduction longer than this streams more than L1 holds per output


def reduction_block(st: TStmt, r: Reduce, lanes: str) -> tuple[str, int] | None:
    """For a long reduction that is the whole statement (a weight gradient): blocks of 8 along
    its longest other axis, so the rows of one block are reused from cache by every output."""
    if st.value is not r or st.accumulate or math.prod(x for _, x in r.axes) < BLOCK_TERMS:
        return None
    axis, ext = max(((n, x) for n, x in r.axes if n != lanes), key=lambda a: a[1], default=(None, 0))
    return (axis, 8) if ext >= 32 else None


FILTER_TILE = 14  # accumulators of a filter-lane tile (measured: 2 vectors x 7 pixels beat 4 x 6, 4 x 4 and 1 x 14)


def filter_axis(st: TStmt, hot: list, W: int) -> tuple[str, int] | None:
    """The filter axis of a direct convolution worth lanes along filters: an output axis, not
    the last, filling whole vectors, that leads the index of exactly one read after only output
    axes (the weights `w[f, k, r, s]`, or Winograd's filter matrices `u[a, b, f, k]`, packed so
    f is contiguous; a transposed conv's `w[k, f, ..]` is left as it was) while every other
    read is independent of it (the input value, broadcast to every lane) -- when the last axis
    does not suit lanes: the input is read along it at a stride (a strided or 1x1 stride-2
    conv, the 7x7 stride-2 stem) or it is shorter than one vector (7x7 and 14x14 outputs;
    Winograd's products at 28x28 and below, whose rows hold 14 or fewer tiles)."""
    r = inner_reduce(st)
    if r is None or r.op != "sum" or window_reduce(st) is not None or len(st.axes) < 3:
        return None
    v, ext_v = st.axes[-1]
    for f, ext_f in st.axes[:-1]:
        weights = [ld for ld in hot if packable(ld, f)]
        inputs = [ld for ld in hot if ld not in weights]
        fills = ext_f >= W and ext_f % W == 0
        one_weight = (len(weights) == 1 and _leads_after_outputs(weights[0], f, st)
                      and stride_kind(weights[0], v) == "none")
        broadcast = all(stride_kind(ld, f) == "none" for ld in inputs)
        along_row = any(stride_kind(ld, v) != "none" for ld in inputs)
        if not (fills and one_weight and broadcast and along_row):
            continue
        if ext_v < W or any(stride_kind(ld, v) == "other" for ld in inputs):
            return f, ext_f
    return None


def _leads_after_outputs(ld, f: str, st: TStmt) -> bool:
    """f is an index of the read, after only output axes of st: w[f, k, r, s], or a batch of
    filter matrices such as Winograd's u[a, b, f, k] (not a transposed conv's w[k, f, ..],
    whose k is reduced)."""
    outputs = {n for n, _ in st.axes}
    for ix in ld.index:
        if ix == Var(f):
            return True
        if not (isinstance(ix, Var) and ix.name in outputs):
            return False
    return False


def filter_tile(ext_f: int, ext_j: int, W: int) -> tuple[int, int]:
    """(vectors of filters K, output pixels R along j) of a filter-lane register tile: 2
    vectors where the filters fill them, and R <= FILTER_TILE / K pixels from the upper half
    of that range, the one wasting the fewest masked pixels of a row (112 or 14: 7; 11: 6)."""
    K = next(k for k in (2, 1) if ext_f % (W * k) == 0)
    cap = min(FILTER_TILE // K, ext_j)
    R = min(range(max(1, cap // 2), cap + 1), key=lambda x: (-(-ext_j // x) * x - ext_j, -x))
    return K, R


def default_schedule(stmts: list[TStmt], shapes: dict[str, tuple[int, ...]], machine: Machine,
                     dtype: str = "f32", pack: bool = True) -> list:
    """Tile (and Pack) steps for the statements worth vectorizing, from shapes and the machine alone."""
    steps: list = []
    W = machine.lanes(dtype)
    packed: set[tuple[str, str]] = set()
    seen: dict[str, int] = {}
    for st in stmts:
        nth = seen.get(st.tensor, 0)
        seen[st.tensor] = nth + 1
        if not schedulable(st, shapes):
            continue
        v, ext_v = st.axes[-1]
        hot = hot_loads(st)
        window = window_reduce(st) is not None
        r = inner_reduce(st)
        conv_f = filter_axis(st, hot, W) if pack else None
        if conv_f is not None:
            # lanes along the filters, a register tile of pixels along j, the weights packed
            # with filters last and the loop over filter vectors outermost
            f, ext_f = conv_f
            ld = next(ld for ld in hot if packable(ld, f))
            d = next(k for k, ix in enumerate(ld.index) if ix == Var(f))
            K, R = filter_tile(ext_f, ext_v, W)
            # in panels of the tile's filters, so each step of the reduction reads one run
            steps.append(Pack(ld.tensor, tuple(k for k in range(len(ld.index)) if k != d) + (d,), st.tensor, nth,
                              W * K))
            steps.append(Tile(st.tensor, f, W, v, R, nth, count_flops(st) >= machine.parallel_flops, K,
                              outermost=True))
            continue
        if pack and r is not None and ext_v <= W // 2 and (window or (
                math.prod(x for _, x in r.axes) >= 1024 and not across_axis(r, hot, W))):
            # a short last axis and no reduction axis to put lanes on: lanes on an output axis
            # that fills whole vectors, its reads packed (a conv's weight gradient along
            # filters; a fused conv+pool whose pooled rows are short)
            cands = [(sum(math.prod(shapes[ld.tensor]) for ld in hot if packable(ld, n)), k, n, x)
                     for k, (n, x) in enumerate(st.axes[:-1])
                     if x >= W and x % W == 0 and any(packable(ld, n) for ld in hot)
                     and all(stride_kind(ld, n) in ("none", "unit") or packable(ld, n) for ld in hot)]
            if cands:  # the axis whose packed copies are smallest (weights rather than activations)
                _, _, v, ext_v = min(cands)
        if (not window and r is not None and r.op in ("sum", "max", "min") and across_axis(r, hot, W)
                and (ext_v <= W // 2 or pack_reuse(st, hot, v) < MIN_PACK_REUSE)):
            # a short output axis (a kernel's width): put the lanes on a reduction axis along
            # which every read is contiguous, and the short axis in a register tile
            w, ext_w = across_axis(r, hot, W)
            steps.append(Tile(st.tensor, w, W, v if ext_v > 1 else None, min(ext_v, 8) if ext_v > 1 else 1,
                              nth, count_flops(st) >= machine.parallel_flops, 1, reduction_block(st, r, w)))
            continue
        mine = len(steps)
        if pack and r is not None:
            for ld in hot:  # a read across lanes: pack it so the lanes are contiguous
                if packable(ld, v) and (st.tensor, ld.tensor) not in packed:
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
                reuse = sum(1 for ld in hot if (stride_kind(ld, v) == "unit" or (st.tensor, ld.tensor) in packed
                                                or (window and strided(ld, v)))
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
            unroll not in set().union(*[free_vars(i) for i in ld.index]) and math.prod(shapes[ld.tensor]) * 4 > machine.l2_bytes
            for ld in hot if stride_kind(ld, v) == "unit" or (st.tensor, ld.tensor) in packed)
        if panel and ext_v % (width * vectors) == 0:  # a large packed operand: its panels contiguous
            steps[mine:] = [replace(s, block=width * vectors) for s in steps[mine:]]
        steps.append(Tile(st.tensor, v, width, unroll, factor, nth, count_flops(st) >= machine.parallel_flops, vectors,
                          None, panel))
    return steps
