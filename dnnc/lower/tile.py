"""Register-tiled loop nests: a statement lowered as its schedule's Tile step says.

A Tile splits one axis into SIMD lanes and unrolls another into a register tile; the
reduction accumulates in a local buffer `T.acc[U, W]` and the result is stored once.
"""
from __future__ import annotations

from ..base.errors import DnncError
from ..ir import Buffer, If, Let, Loop, Set, Stmt, Store
from ..te import affine
from ..te.expr import Binary, Const, Expr, Load, Reduce, Scalar, Select, Var, free_vars, substitute, subst_vars
from ..te.stmt import TStmt
from .nest import INIT, _Ctx, _guard, lower_stmt, loops

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
    value = affine.canon_loads(subst_vars(st.value, sub))
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
    body_e = affine.canon_loads(subst_vars(r.body, sub))
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
    value = affine.canon_loads(subst_vars(st.value, {k: e for k, e in sub.items() if k != w}))
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
