"""Lowering: tensor-expression statements -> loop nests (naive order, before scheduling).

Each statement T[axes] = value becomes loops over its axes (outermost first) around a store.
Each reduction becomes a register initialized before its own loops and updated inside them.
A read that may fall outside its tensor inside a reduction gets a guard, placed in the
innermost loop that its index depends on, so an out-of-range term contributes nothing.
"""
from __future__ import annotations

import math

from ..te import affine
from ..base.errors import DnncError
from ..te.expr import Binary, Const, Expr, Load, Reduce, Scalar, Select, Var, free_vars, substitute, subst_vars
from ..front.graph import Graph
from ..ir import Buffer, If, Kernel, Let, Loop, Program, Set, Stmt, Store
from ..te.stmt import TStmt

INIT = {"sum": 0.0, "mean": 0.0, "max": float("-inf"), "min": float("inf"), "argmax": 0.0, "count": 0.0}


def lower_graph(g: Graph, outputs: tuple[str, ...] | None = None, with_loss: bool = False,
                name: str | None = None, dtype: str = "f32", schedule: bool | list = True,
                overrides: list = (), sparse: dict[str, int] | None = None) -> Program:
    """The forward program of g: every layer needed for `outputs` (default g.outputs).

    `sparse` names dense-layer weights to read in ELL form with R entries per row
    (passes/sparse.py); their arrays W.ell and W.cols become parameters of the program."""
    from ..driver.programs import needed_layers

    outputs = outputs or g.outputs
    keep = needed_layers(g, outputs, with_loss)
    finals = set(outputs) | ({"loss"} if with_loss and g.loss else set())
    used = set()
    for layer in keep:
        for st in layer.inst.stmts:
            used.add(st.tensor)
            used |= {x.tensor for x in st.value.walk() if isinstance(x, Load)}
    buffers = []
    for t in g.tensors.values():
        if t.name not in used:
            continue
        kind = t.kind
        if t.name in finals:
            kind = "output"
        elif kind == "act":
            kind = "temp"
        buffers.append(Buffer(t.name, t.shape, kind, dtype))
    groups = [(layer.name, list(layer.inst.stmts)) for layer in keep]
    if sparse:
        from ..te.sparse import sparsify

        groups, made = sparsify(groups, sparse)
        buffers += [Buffer(n, shape, "param", dtype) for n, shape in made]
        used = {st.tensor for _, stmts in groups for st in stmts} | {
            x.tensor for _, stmts in groups for st in stmts for x in st.value.walk() if isinstance(x, Load)}
        buffers = [b for b in buffers if b.name in used]
    from ..schedule.steps import from_settings

    # steps for gradients belong to the training program (one --schedule list serves both)
    named = [o for o in from_settings(g.settings) + list(overrides) if ".grad" not in o.tensor]
    if schedule is not False:
        from ..te.conv import Algorithm, apply_algorithms, default_algorithms
        from ..te.fuse import fuse_elementwise
        from ..te.pool import fuse_pool, pool_first

        # a statement a tile step names keeps its own loop nest, so the step applies to it
        keep = set(finals) | {o.tensor for o in named if not isinstance(o, Algorithm)}
        shapes = {b.name: b.shape for b in buffers}
        if schedule is True:  # the user's algorithm steps take precedence over the defaults
            mine = {o.tensor for o in named if isinstance(o, Algorithm)}
            named = [a for a in default_algorithms(groups, shapes) if a.tensor not in mine] + named
        groups, _ = apply_algorithms(groups, named, shapes)  # im2col or Winograd
        groups = pool_first(groups, keep)  # the activation after the pooling
        groups = fuse_elementwise(groups, keep)  # activations in their producer's epilogue
        groups = fuse_pool(groups, keep, shapes)  # each pool window straight from the conv
        buffers = _buffers_of(groups, buffers, dtype)
    return lower_groups(name or g.name, buffers, groups, schedule, dtype, named)


def _buffers_of(groups, buffers: list[Buffer], dtype: str) -> list[Buffer]:
    """The buffers the statements still use; a tensor a rewrite introduced becomes a temporary."""
    used: dict[str, tuple[int, ...]] = {}
    for _, stmts in groups:
        for st in stmts:
            used.setdefault(st.tensor, tuple(x for _, x in st.axes))
            for x in st.value.walk():
                if isinstance(x, Load):
                    used.setdefault(x.tensor, ())
    known = {b.name for b in buffers}
    return [b for b in buffers if b.name in used] + [
        Buffer(n, s, "temp", dtype) for n, s in used.items() if n not in known]


KIND_ORDER = {"input": 0, "label": 1, "hyper": 2, "param": 3, "state": 4, "output": 5, "grad": 6, "temp": 7,
              "local": 8}


def lower_groups(name: str, buffers: list[Buffer], groups: list[tuple[str, list[TStmt]]],
                 schedule: bool | list = True, dtype: str = "f32", overrides: list = ()) -> Program:
    """One kernel per named group of statements, over the given buffers (args first).

    With `schedule` (True: the default schedule; or the list of steps to apply) statements
    are packed and tiled as the steps say; with False each is the naive nest of lower_stmt.
    """
    from ..te.conv import Algorithm
    from ..schedule.steps import Tile, apply_packs, default_schedule, merge, schedulable

    shapes = {b.name: b.shape for b in buffers}
    buffers = list(buffers)
    tiles: dict[tuple[str, int], Tile] = {}
    steps: list = []
    if schedule is not False:
        flat = [st for _, stmts in groups for st in stmts]
        steps = default_schedule(flat, shapes, dtype) if schedule is True else list(schedule)
        steps = merge(steps, list(overrides))
        tiles = {s.key: s for s in steps if isinstance(s, Tile)}
        new_groups = []
        writers: dict[str, int] = {}
        for kname, stmts in groups:
            stmts, temps = apply_packs(stmts, steps, shapes, writers)
            for t, s in temps:
                shapes[t] = s
                buffers.append(Buffer(t, s, "temp", dtype))
                if (t, 0) not in tiles:
                    tiles[t, 0] = Tile(t, f"p{len(s) - 1}", 16 if dtype == "f32" else 8)
            new_groups.append((kname, stmts))
        groups = new_groups
    kernels = []
    seen: dict[str, int] = {}
    for kname, stmts in groups:
        body: list[Stmt] = []
        paired: set[int] = set()
        for k, st in enumerate(stmts):
            nth = seen.get(st.tensor, 0)
            seen[st.tensor] = nth + 1
            if k in paired:
                continue
            if (st.tensor, nth) in tiles:
                step = tiles[st.tensor, nth]
                if not schedulable(st, shapes):
                    raise DnncError(f"schedule step {step}: {st.tensor} cannot be tiled: " + (
                        "it is written at computed positions (a scatter)" if st.index is not None else
                        "its reductions nest in a way a register tile cannot hold") + "; use naive(...)")
                across = step.vector not in dict(st.axes)
                partner = _argmax_partner(st, stmts[k + 1:]) if not across else None
                if partner is not None:  # the max and its argmax in one nest
                    paired.add(k + 1)
                nest, local = lower_across(st, shapes, step) if across else lower_tiled(st, shapes, step, partner)
                body += nest
                for b in local:
                    shapes[b.name] = b.shape
                    buffers.append(Buffer(b.name, b.shape, "local", dtype))
            else:
                body += lower_stmt(st, shapes)
        kernels.append(Kernel(kname, tuple(body), kname))
    written = {st.tensor for _, stmts in groups for st in stmts}
    for o in overrides:
        if o.tensor not in written and not isinstance(o, Algorithm):
            raise DnncError(f"schedule step {o}: no statement writes {o.tensor} (statements write: "
                            f"{', '.join(sorted(written))})")
    buffers = sorted(buffers, key=lambda b: KIND_ORDER[b.kind])
    return Program(name, tuple(buffers), tuple(kernels), tuple(steps) if schedule is not False else ())


def reshape(st: TStmt, shapes: dict) -> bool:
    """st writes every element once, its index a row-major reshape of its one axis (so it can
    be tiled like a statement over the tensor's own axes)."""
    if st.index is None or st.accumulate or len(st.axes) != 1:
        return False
    flat: Expr = Const(0)
    for ix, x in zip(st.index, shapes[st.tensor], strict=True):
        flat = Binary("+", Binary("*", flat, Const(x)), ix)
    return affine.simplify(flat) == Var(st.axes[0][0]) and st.axes[0][1] == math.prod(shapes[st.tensor])


def _argmax_partner(st: TStmt, rest: list[TStmt]) -> TStmt | None:
    """The companion `T.arg = argmax(W) e` right after `T = max(W) e` (autodiff's normalize
    adds it), to be computed in T's nest."""
    v = st.value
    if not rest or not isinstance(v, Reduce) or v.op != "max" or st.accumulate or st.index is not None:
        return None
    other = rest[0]
    same = other.tensor == f"{st.tensor}.arg" and other.axes == st.axes and other.index is None
    return other if same and other.value == Reduce("argmax", v.axes, v.body, v.loc) else None


def _fresh_name(base: str, taken: set[str]) -> str:
    name = base
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def lower_tiled(st: TStmt, shapes: dict, t, partner: TStmt | None = None) -> tuple[list[Stmt], list[Buffer]]:
    """The loop nest of a Tile step: outer axes, then the reduction, then a register tile.

    Invariant: computes what lower_stmt(st) computes (up to the order of a sum's terms).
    Axis v becomes vo*W + vi with vi a vector loop; axis u becomes uo*U + ui with ui
    unrolled. A reduction accumulates in the local buffer T.acc[U, W] inside its own loops,
    and the result is stored once. Lanes and rows past the end are masked off.
    """
    from ..schedule.steps import single_reduce, window_reduce

    axes = dict(st.axes)
    if t.vector not in axes or (t.unroll is not None and (t.unroll not in axes or t.unroll == t.vector)):
        raise DnncError(f"schedule step {t} names an axis that {st.tensor} does not have "
                        f"(axes: {', '.join(axes)})")
    taken = set(axes) | {n for x in st.value.walk() if isinstance(x, Reduce) for n, _ in x.axes}
    v, W, ext_v = t.vector, t.width, axes[t.vector]
    K = t.vectors
    u, U = t.unroll, (t.factor if t.unroll else 1)
    vo, vi = _fresh_name(v + "o", taken), _fresh_name(v + "i", taken)
    vk = _fresh_name(v + "k", taken)
    lane = Binary("+", Binary("*", Var(vk), Const(W)), Var(vi)) if K > 1 else Var(vi)
    sub: dict[str, Expr] = {v: affine.simplify(Binary("+", Binary("*", Var(vo), Const(W * K)), lane))}
    outer = [(n, x) for n, x in st.axes if n not in (u, v) and x > 1]
    sub.update({n: Const(0) for n, x in st.axes if n not in (u, v) and x == 1})  # no loop of one
    if u:
        uo, ui = _fresh_name(u + "o", taken), _fresh_name(u + "i", taken)
        sub[u] = affine.simplify(Binary("+", Binary("*", Var(uo), Const(U)), Var(ui)))
        outer.append((uo, -(-axes[u] // U)))
    if getattr(t, "panel", False) and u:  # vectors outside the rows: a panel of columns stays cached
        outer.insert(outer.index((uo, -(-axes[u] // U))), (vo, -(-ext_v // (W * K))))
    else:
        outer.append((vo, -(-ext_v // (W * K))))
    ranges = {n: (0, x - 1) for n, x in outer}
    ranges[vi] = (0, W - 1)
    ranges[vk] = (0, K - 1)
    if u:
        ranges[ui] = (0, U - 1)
    edge: list[Expr] = []
    if u and axes[u] % U:
        edge.append(Binary("<", sub[u], Const(axes[u])))
    if ext_v % (W * K):
        edge.append(Binary("<", sub[v], Const(ext_v)))
    value = _canon_loads(subst_vars(st.value, sub))
    target = tuple(affine.simplify(subst_vars(ix, sub)) for ix in st.target)
    if st.accumulate:
        value = Binary("+", Load(st.tensor, target), value)

    def tile(body: list[Stmt]) -> list[Stmt]:
        nest: Stmt = Loop(vi, W, tuple(body), "vector")
        if K > 1:
            nest = Loop(vk, K, (nest,), "unroll")
        if u:
            nest = Loop(ui, U, (nest,), "unroll")
        return [nest]

    locals_: list[Buffer] = []
    sh = dict(shapes)

    def local(name: str) -> str:
        sh[name] = (U, W * K)
        locals_.append(Buffer(name, (U, W * K), "local"))
        return name

    whole = TStmt(st.tensor, st.axes, value)
    win = window_reduce(whole)
    r = win[1] if win else single_reduce(whole)
    if r is None:
        ctx = _Ctx(sh, ranges)
        pre, val = ctx.value(value, {})
        return _outer_loops(outer, t, tile(_guard(edge, pre + [Store(st.tensor, target, val)]))), locals_
    cell = (Var(ui) if u else Const(0), affine.simplify(lane))
    top = win[0] if win else r  # the reduction the statement's expression holds
    for red in (top, r):
        for n, x in red.axes:
            ranges[n] = (0, x - 1)
    ctx = _Ctx(sh, ranges)
    lane_vars = {vi, vk} | ({ui} if u else set())
    # an argmax, or a max computed with its argmax companion, keeps the best value and where
    ranked = top.op == "argmax" or partner is not None
    acc = local(f"{st.tensor}.acc{t.nth or ''}")
    if win:  # acc: the inner sum at one window position; best: the window's running result
        best, arg = local(f"{acc}.win"), (local(f"{acc}.arg") if ranked else None)
    elif top.op == "argmax":
        best, arg = local(f"{acc}.best"), acc
    else:
        best, arg = acc, (local(f"{acc}.arg") if ranked else None)

    def accumulate(red: Reduce, into: str, term: Expr, pre: list[Stmt], guards: list[Expr]) -> list[Stmt]:
        """Loops over red's axes updating tile `into` by one term; guards outside the lanes
        skip whole iterations, those that depend on a lane mask the update."""
        inner_g = [g for g in guards if free_vars(g) & lane_vars]
        if ranked and red is top:  # the first maximum wins
            flat: Expr = Const(0)
            for n, x in red.axes:
                flat = Binary("+", Binary("*", flat, Const(x)), Var(n))
            wins = Binary(">", term, Load(into, cell))
            update = pre + [Store(arg, cell, Select(wins, affine.simplify(flat), Load(arg, cell))),
                            Store(into, cell, Binary("max", Load(into, cell), term))]
        else:
            op = {"sum": "+", "max": "max", "min": "min"}[red.op]
            update = pre + [Store(into, cell, Binary(op, Load(into, cell), term))]
        return loops(red.axes, tile(_guard(inner_g, update)), [g for g in guards if g not in inner_g])

    pre, term = ctx.value(r.body, {})
    nest = accumulate(r, acc, term, pre, ctx.guards(r.body, {}))
    if win:  # at each window position: the inner sum from zero, then the window's update
        at_acc = substitute(top.body, lambda x: Load(acc, cell) if x == r else None)
        pre_w, term_w = ctx.value(at_acc, {})
        update = accumulate(top, best, term_w, pre_w, ctx.guards(top.body, {}))
        nest = _wrap_window(top.axes, tile([Store(acc, cell, Const(0.0))]) + nest, update)
    init = [Store(best, cell, Const(float("-inf") if ranked else INIT[top.op]))]
    if ranked:
        init.append(Store(arg, cell, Const(0.0)))
    result = Load(arg, cell) if top.op == "argmax" else Load(best, cell)
    pre2, val2 = _Ctx(sh, ranges).value(substitute(value, lambda x: result if x == top else None), {})
    stores = pre2 + [Store(st.tensor, target, val2)]
    if partner is not None:
        stores.append(Store(partner.tensor, target, Load(arg, cell)))
    body = tile(init) + nest + tile(_guard(edge, stores))
    return _outer_loops(outer, t, body), locals_


def _wrap_window(axes, before: list[Stmt], update: list[Stmt]) -> list[Stmt]:
    """Loops over a pool window's axes around the inner reduction and the window's update.

    `update` comes from `loops(axes, ...)`, so its outermost statements are the window loops
    around the update alone; the inner reduction is spliced in at the innermost window loop.
    """
    def splice(stmts: list[Stmt], depth: int) -> list[Stmt]:
        if depth == len(axes):
            return before + stmts
        out = []
        for s in stmts:
            if isinstance(s, Loop):
                out.append(Loop(s.var, s.extent, tuple(splice(list(s.body), depth + 1)), s.kind))
            elif isinstance(s, If):
                out.append(If(s.cond, tuple(splice(list(s.then), depth)), s.orelse))
            else:
                out.append(s)
        return out

    return splice(update, 0)


def _outer_loops(outer, t, body: list[Stmt]) -> list[Stmt]:
    for k, (n, x) in reversed(list(enumerate(outer))):
        body = [Loop(n, x, tuple(body), "parallel" if k == 0 and t.parallel and x >= 2 else "serial")]
    return body


def lower_across(st: TStmt, shapes: dict, t) -> tuple[list[Stmt], list[Buffer]]:
    """A Tile step whose vector axis is the reduction's: lanes sum different terms.

    Invariant: computes what lower_stmt(st) computes (up to the order of a sum's terms).
    The reduction axis w becomes wo*W + wi with wi the vector lanes; output axis u is unrolled
    into a register tile T.acc[U, W]; after the reduction each row's lanes are combined and
    stored. For a weight gradient (`sum(n, i, j) dy[.., i, j] * x[.., i + r, j + s]`) the
    lanes run along j, where both reads are contiguous, instead of along a 5-wide kernel axis.
    """
    from ..schedule.steps import single_reduce

    r = single_reduce(st)
    axes = dict(st.axes)
    raxes = dict(r.axes) if r is not None else {}
    if r is None or r.op not in ("sum", "max", "min") or t.vector not in raxes or (
            t.unroll is not None and t.unroll not in axes):
        raise DnncError(f"schedule step {t} names an axis that {st.tensor} does not have (axes: "
                        f"{', '.join(axes)}; reduction axes: {', '.join(raxes) or 'none'})")
    taken = set(axes) | set(raxes)
    w, W = t.vector, t.width
    u, U = t.unroll, (t.factor if t.unroll else 1)
    wo, wi = _fresh_name(w + "o", taken), _fresh_name(w + "i", taken)
    sub: dict[str, Expr] = {w: affine.simplify(Binary("+", Binary("*", Var(wo), Const(W)), Var(wi)))}
    outer = [(n, x) for n, x in st.axes if n != u and x > 1]
    sub.update({n: Const(0) for n, x in st.axes if n != u and x == 1})
    if u:
        uo, ui = _fresh_name(u + "o", taken), _fresh_name(u + "i", taken)
        sub[u] = affine.simplify(Binary("+", Binary("*", Var(uo), Const(U)), Var(ui)))
        outer.append((uo, -(-axes[u] // U)))
    red = [(wo, -(-raxes[w] // W)) if n == w else (n, x) for n, x in r.axes]
    block = t.block if t.block and t.block[0] in raxes and t.block[0] != w else None
    if t.block and block is None:
        raise DnncError(f"schedule step {t}: block names {t.block[0]}, which is not a reduction axis of "
                        f"{st.tensor} other than the lanes' ({', '.join(n for n in raxes if n != w)})")
    if block and (st.value is not r or st.accumulate):
        raise DnncError(f"schedule step {t}: only a statement that is one sum can take its reduction in blocks")
    if block:  # axis b = bo*B + bi: bo runs just inside the outermost output loop
        b_, B = block
        bo, bi = _fresh_name(b_ + "o", taken), _fresh_name(b_ + "i", taken)
        sub[b_] = affine.simplify(Binary("+", Binary("*", Var(bo), Const(B)), Var(bi)))
        red = [(bi, B) if n == b_ else (n, x) for n, x in red]
        outer.insert(1 if outer else 0, (bo, -(-raxes[b_] // B)))
    ranges = {n: (0, x - 1) for n, x in outer + red}
    ranges[wi] = (0, W - 1)
    if u:
        ranges[ui] = (0, U - 1)
    edge = [Binary("<", sub[u], Const(axes[u]))] if u and axes[u] % U else []
    body_e = _canon_loads(subst_vars(r.body, sub))
    acc = f"{st.tensor}.acc{t.nth or ''}"
    sh = dict(shapes)
    sh[acc] = (U, W)
    cell = (Var(ui) if u else Const(0), Var(wi))
    ctx = _Ctx(sh, ranges)
    pre, val = ctx.value(body_e, {})
    guards = ctx.guards(body_e, {})
    if raxes[w] % W:  # lanes past the reduction's end contribute nothing: a mask, like padding
        guards.append(Binary("<", sub[w], Const(raxes[w])))
    if block and raxes[block[0]] % block[1]:  # the last block is short
        guards.append(Binary("<", sub[block[0]], Const(raxes[block[0]])))
    lanes = {wi} | ({ui} if u else set())
    inner_g = [g for g in guards if free_vars(g) & lanes]
    op = {"sum": "+", "max": "max", "min": "min"}[r.op]

    def tile(body: list[Stmt]) -> list[Stmt]:
        nest: Stmt = Loop(wi, W, tuple(body), "vector")
        if u:
            nest = Loop(ui, U, (nest,), "unroll")
        return [nest]

    nest = loops(red, tile(_guard(inner_g, pre + [Store(acc, cell, Binary(op, Load(acc, cell), val))])),
                 [g for g in guards if g not in inner_g])
    prologue = tile([Store(acc, cell, Const(INIT[r.op]))])
    # combine each row's lanes, then the statement's own expression around the reduction
    total = f"{acc}.lanes"
    row = Load(acc, (Var(ui) if u else Const(0), Var(wi)))
    combine = [Let(total, Const(INIT[r.op])),
               Loop(wi, W, (Set(total, Binary(op, Scalar(total), row)),), "unroll")]
    value = _canon_loads(subst_vars(st.value, {k: e for k, e in sub.items() if k != w}))
    if st.accumulate or block:  # with blocks, each adds its part to the zeroed output
        value = Binary("+", Load(st.tensor, tuple(sub.get(n, Var(n)) for n, _ in st.axes)), value)
    value = substitute(value, lambda x: Scalar(total) if isinstance(x, Reduce) else None)
    pre2, val2 = _Ctx(sh, ranges).value(value, {})
    target = tuple(sub.get(n, Var(n)) for n, _ in st.axes)
    epi: Stmt = Loop(ui, U, tuple(_guard(edge, combine + pre2 + [Store(st.tensor, target, val2)])), "unroll") \
        if u else None
    epilogue = [epi] if u else combine + pre2 + [Store(st.tensor, target, val2)]
    body = prologue + nest + epilogue
    for k, (n, x) in reversed(list(enumerate(outer))):
        body = [Loop(n, x, tuple(body), "parallel" if k == 0 and t.parallel and x >= 2 else "serial")]
    if block:
        body = lower_stmt(TStmt(st.tensor, st.axes, Const(0.0), st.loc), shapes) + body
    return body, [Buffer(acc, (U, W), "local")]


def _canon_loads(e: Expr) -> Expr:
    def fix(x):
        if isinstance(x, Load):
            return Load(x.tensor, tuple(affine.simplify(i) for i in x.index), x.loc)
        return None

    return substitute(e, fix)


def lower_stmt(st: TStmt, shapes: dict[str, tuple[int, ...]]) -> list[Stmt]:
    ctx = _Ctx(shapes, {n: (0, x - 1) for n, x in st.axes})
    pre, value = ctx.value(st.value, {})
    target = st.target
    if st.accumulate:
        value = Binary("+", Load(st.tensor, target), value)
    body: list[Stmt] = pre + [Store(st.tensor, target, value)]
    if st.index is not None:
        # a scatter: a term whose write or reads fall outside their tensors contributes nothing
        write = ctx.guards(Load(st.tensor, target), {})
        return loops(st.axes, body, write + [g for g in ctx.guards(st.value, {}) if g not in write])
    for n, x in reversed(st.axes):
        body = [Loop(n, x, tuple(body))]
    return body


class _Ctx:
    def __init__(self, shapes, ranges):
        self.shapes = shapes
        self.ranges = dict(ranges)
        self.count = 0

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def value(self, e: Expr, facts: dict) -> tuple[list[Stmt], Expr]:
        """Statements to run first, and the expression that then computes e."""
        if isinstance(e, Reduce):
            return self.reduce(e, facts)
        if isinstance(e, Select):
            pc, cond = self.value(e.cond, facts)
            pa, a = self.value(e.a, affine.facts_from(e.cond, self.ranges, facts))
            pb, b = self.value(e.b, affine.facts_from(e.cond, self.ranges, facts, negate=True))
            return pc + pa + pb, Select(cond, a, b, e.loc)
        kids = e.children()
        if not kids or isinstance(e, Load):
            return [], e
        pre: list[Stmt] = []
        new = []
        for k in kids:
            p, v = self.value(k, facts)
            pre += p
            new.append(v)
        from ..te.expr import rebuild

        return pre, rebuild(e, tuple(new))

    def reduce(self, e: Reduce, facts: dict) -> tuple[list[Stmt], Expr]:
        for n, x in e.axes:
            self.ranges[n] = (0, x - 1)
        acc = self.fresh("acc")
        pre, body = self.value(e.body, facts)
        guards = self.guards(e.body, facts)
        if e.op == "argmax":  # the first maximum in row-major order of the axes, as a number
            val = self.fresh("v")
            best = self.fresh("best")
            flat: Expr = Const(0)
            for n, x in e.axes:
                flat = Binary("+", Binary("*", flat, Const(x)), Var(n))
            update: list[Stmt] = pre + [Let(val, body), If(Binary(">", Scalar(val), Scalar(best)), (
                Set(best, Scalar(val)), Set(acc, affine.simplify(flat))))]
        elif e.op == "count":  # how many terms have every read in range
            update = pre + [Set(acc, Binary("+", Scalar(acc), Const(1.0)))]
        else:
            op = {"sum": "+", "mean": "+", "max": "max", "min": "min"}[e.op]
            update = pre + [Set(acc, Binary(op, Scalar(acc), body))]
        counted = e.op == "mean" and guards
        cnt = self.fresh("cnt") if counted else None
        if cnt:
            update.append(Set(cnt, Binary("+", Scalar(cnt), Const(1.0))))
        nest = loops(e.axes, update, guards)
        out: list[Stmt] = [Let(acc, Const(INIT[e.op]))] + ([Let(cnt, Const(0.0))] if cnt else []) + (
            [Let(best, Const(float("-inf")))] if e.op == "argmax" else []) + nest
        if e.op == "mean":
            denom = Scalar(cnt) if cnt else Const(float(math.prod(x for _, x in e.axes)))
            return out, Binary("/", Scalar(acc), denom)
        return out, Scalar(acc)

    def guards(self, body: Expr, facts: dict) -> list[Expr]:
        return read_guards(body, self.ranges, facts, self.shapes)


def read_guards(body: Expr, ranges: dict, facts: dict, shapes: dict) -> list[Expr]:
    """Conditions under which every read in body (outside inner reductions) is in range.

    Only the comparisons that the ranges and facts do not already prove are returned.
    """
    out: list[Expr] = []

    def visit(e, facts):
        if isinstance(e, Reduce):
            return  # an inner reduction guards its own reads
        if isinstance(e, Select):
            visit(e.cond, facts)
            visit(e.a, affine.facts_from(e.cond, ranges, facts))
            visit(e.b, affine.facts_from(e.cond, ranges, facts, negate=True))
            return
        if isinstance(e, Load):
            shape = shapes[e.tensor]
            for k, ix in enumerate(e.index):
                b = affine.bounds(ix, ranges, facts)
                lo, hi = b if b is not None else (-1, shape[k])
                if lo < 0:
                    c = Binary(">=", ix, Const(0))
                    if c not in out:
                        out.append(c)
                if hi > shape[k] - 1:
                    c = Binary("<", ix, Const(shape[k]))
                    if c not in out:
                        out.append(c)
        for c in e.children():
            visit(c, facts)

    visit(body, facts)
    return out


def loops(axes, body: list[Stmt], guards: list[Expr]) -> list[Stmt]:
    """Loops over axes (outermost first) around body, each guard placed in the innermost loop
    whose variable it uses, so the iterations a guard rules out are skipped whole."""
    names = [n for n, _ in axes]
    placed: dict[str | None, list[Expr]] = {}
    for g in guards:
        deep = [n for n in names if n in free_vars(g)]
        placed.setdefault(deep[-1] if deep else None, []).append(g)
    for n, x in reversed(list(axes)):
        body = [Loop(n, x, tuple(_guard(placed.get(n, []), body)))]
    return _guard(placed.get(None, []), body)


def _guard(conds: list[Expr], body: list[Stmt]) -> list[Stmt]:
    """body under the conjunction of conds. A condition that reads memory (a position stored in
    a tensor) goes in an inner guard, evaluated only where the plain ones hold, so its own read
    stays in range."""
    if not conds:
        return body
    reads = [c for c in conds if any(isinstance(x, Load) for x in c.walk())]
    plain = [c for c in conds if c not in reads]
    if reads and plain:
        return _guard(plain, _guard(reads, body))
    cond = conds[0]
    for c in conds[1:]:
        cond = Binary("and", cond, c)
    return [If(cond, tuple(body))]
