"""The programs a network compiles to: forward; forward + loss + backward; a training step.

Each is one Program of kernels (one per layer and stage), so one native call does the
whole job and the memory planner shares storage across all of it by liveness.
"""
from __future__ import annotations

from ..base.errors import DnncError
from ..front.graph import Graph, Layer
from ..ir import Buffer, Program
from ..lower.groups import lower_groups
from ..schedule.steps import from_settings
from ..te.autodiff import backward, grad_name, normalize
from ..te.conv import Algorithm, apply_algorithms, default_algorithms
from ..te.expr import Const, Load
from ..te.fuse import fuse_elementwise
from ..te.optim import HYPER, HYPER_SIZE, Optimizer
from ..te.pool import fuse_pool, pool_first
from ..te.sparse import sparsify
from ..te.stmt import TStmt


def needed_layers(g: Graph, outputs: tuple[str, ...], with_loss: bool) -> list[Layer]:
    layers = list(g.layers) + ([g.loss] if with_loss and g.loss else [])
    needed = set(outputs) | ({"loss"} if with_loss and g.loss else set())
    keep = []
    for layer in reversed(layers):
        if layer.output in needed:
            keep.append(layer)
            needed |= set(layer.inputs)
    keep.reverse()
    return keep


def training_program(g: Graph, optimizer: Optimizer | None = None, dtype: str = "f32",
                     name: str | None = None, schedule: bool = True, overrides: list = ()) -> Program:
    """Forward (with the values the backward needs saved), loss, backward and, with an
    optimizer, the parameter update: d loss / d param lands in `param.grad`."""
    named = from_settings(g.settings) + list(overrides)
    buffers, groups = training_groups(g, optimizer, dtype, fuse=schedule is not False, steps=named,
                                      keep={o.tensor for o in named if not isinstance(o, Algorithm)})
    return lower_groups(name or g.name, buffers, groups, schedule, dtype, named)


def update_program(g: Graph, optimizer: Optimizer, dtype: str = "f32") -> Program:
    """The optimizer's step alone: every trainable parameter updated from `param.grad`, for
    gradients computed elsewhere (summed over replicas or ranks)."""
    shapes = {n: t.shape for n, t in g.tensors.items()}
    trainable = [p for p in g.params if p not in g.fixed]
    buffers = [Buffer(HYPER, (HYPER_SIZE,), "hyper", dtype)]
    groups = []
    for p in trainable:
        buffers.append(Buffer(p, shapes[p], "param", dtype))
        buffers.append(Buffer(grad_name(p), shapes[p], "grad", dtype))
        buffers += [Buffer(s, shapes[p], "state", dtype) for s in optimizer.state(p)]
        groups.append((p + ".update", optimizer.stmts(p, shapes[p])))
    return lower_groups((g.name + "_update"), buffers, groups, True, dtype)


def training_groups(g: Graph, optimizer: Optimizer | None = None, dtype: str = "f32", fuse: bool = True,
                    keep: set[str] = frozenset(), steps: list = ()):
    """The buffers and the named groups of tensor-expression statements of a training program.

    With `fuse`, conv+ReLU+pool runs as one nest (passes/pool.py): the activation moves after
    the pooling before differentiation, and each pool window is computed from the conv after
    it, so the forward saves the pooled values and argmax positions, never the conv output.
    Statements writing a tensor in `keep` (named by schedule steps) are not fused; algorithm
    steps among `steps` choose how convolutions are computed.
    """

    if g.loss is None:
        raise DnncError(f"network '{g.name}' has no loss; add one, e.g. loss softmax_cross_entropy(logits, label)")
    layers = needed_layers(g, g.outputs, True)
    shapes = {n: t.shape for n, t in g.tensors.items()}
    kinds = {n: t.kind for n, t in g.tensors.items()}
    groups: list[tuple[str, list[TStmt]]] = []
    owner: dict[str, str] = {}
    all_stmts: list[TStmt] = []
    finals = set(g.outputs) | {"loss"}
    forward = [(layer.name, list(layer.inst.stmts)) for layer in layers]
    forward, temps = apply_algorithms(forward, list(steps), shapes)
    for t, s in temps:
        kinds[t] = "temp"
    if fuse:
        forward = pool_first(forward, finals | set(keep))
    for name, stmts in forward:
        stmts, temps = normalize(stmts)
        for t, s in temps:
            shapes[t] = s
            kinds[t] = "temp"
        for st in stmts:
            owner[st.tensor] = name
            shapes.setdefault(st.tensor, tuple(x for _, x in st.axes))
        groups.append((name, stmts))
        all_stmts += stmts
    for layer in layers:  # running statistics, after the forward pass that computes them
        if layer.inst.updates:
            groups.append((layer.name + ".state", list(layer.inst.updates)))
    params = [p for p in g.params if any(p in layer.params for layer in layers)]
    trainable = [p for p in params if p not in g.fixed]
    adj, grads, unreached = backward(all_stmts, shapes, trainable, "loss")
    seed = TStmt(grad_name("loss"), (), Const(1.0))
    back: dict[str, list[TStmt]] = {}
    order: list[str] = []
    for st, stmts in adj:
        lname = owner[st.tensor] + ".grad"
        if lname not in back:
            back[lname] = []
            order.append(lname)
        back[lname] += stmts
    groups.append(("loss.grad.seed", [seed]))
    groups += [(n, back[n]) for n in order]
    for gname, s in grads:
        shapes[gname] = s
        base = gname[: -len(".grad")]
        kinds[gname] = "grad" if base in params else "temp"
    shapes[grad_name("loss")] = ()
    kinds.setdefault(grad_name("loss"), "temp")
    for p in unreached:  # a parameter the loss does not depend on: its gradient is zero
        gname = grad_name(p)
        shapes[gname] = shapes[p]
        kinds[gname] = "grad"
        groups.append((gname, [TStmt(gname, tuple((f"z{k}", x) for k, x in enumerate(shapes[p])), Const(0.0))]))
    if optimizer is not None:
        shapes[HYPER] = (HYPER_SIZE,)
        kinds[HYPER] = "hyper"
        for p in trainable:
            for s in optimizer.state(p):
                shapes[s] = shapes[p]
                kinds[s] = "state"
            groups.append((p + ".update", optimizer.stmts(p, shapes[p])))
    if fuse:
        groups = fuse_pool(groups, finals | set(keep), shapes)
    used = _used(groups)
    rank = {p: k for k, p in enumerate(g.params)}
    used.sort(key=lambda n: rank.get(n, -1))  # parameters in source order, the rest as first used
    buffers = []
    for n in used:
        kind = kinds.get(n, "temp")
        if n in finals:
            kind = "output"
        elif kind == "act":
            kind = "temp"
        buffers.append(Buffer(n, shapes[n], kind, dtype))
    return buffers, groups


def _used(groups) -> list[str]:
    seen: dict[str, None] = {}
    for _, stmts in groups:
        for st in stmts:
            for x in st.value.walk():
                if isinstance(x, Load):
                    seen.setdefault(x.tensor)
            seen.setdefault(st.tensor)
    return list(seen)


def lower_graph(g: Graph, outputs: tuple[str, ...] | None = None, with_loss: bool = False,
                name: str | None = None, dtype: str = "f32", schedule: bool | list = True,
                overrides: list = (), sparse: dict[str, int] | None = None) -> Program:
    """The forward program of g: every layer needed for `outputs` (default g.outputs).

    `sparse` names dense-layer weights to read in ELL form with R entries per row
    (passes/sparse.py); their arrays W.ell and W.cols become parameters of the program."""
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
        groups, made = sparsify(groups, sparse)
        buffers += [Buffer(n, shape, "param", dtype) for n, shape in made]
        used = {st.tensor for _, stmts in groups for st in stmts} | {
            x.tensor for _, stmts in groups for st in stmts for x in st.value.walk() if isinstance(x, Load)}
        buffers = [b for b in buffers if b.name in used]
    # steps for gradients belong to the training program (one --schedule list serves both)
    named = [o for o in from_settings(g.settings) + list(overrides) if ".grad" not in o.tensor]
    if schedule is not False:
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
