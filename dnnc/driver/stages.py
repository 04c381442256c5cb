"""THE pipeline: every stage from tensor expressions to LLVM IR, in one order for every program.

Each stage is a pure function Unit -> Unit with its invariant in its docstring. A stage runs
for the kinds of program it names (a training program adds `normalize`, `state_updates`,
`backward` and `update` between the inference stages; it never reorders them). The
verifier runs after each loop-IR stage. `dnnc ir --stage NAME` prints any stage's output and
`dnnc ir --list-stages` prints this list; the model, AOT compilation and `dnnc bench` all
run it through `driver.compile`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..base.errors import DnncError
from ..front.graph import Graph, Layer
from ..ir import Buffer
from ..ir.memory import plan
from ..ir.passes.simplify import fold_guards
from ..ir.passes.split import split_edges
from ..ir.verify import verify
from ..lower.groups import lower_groups
from ..schedule.pack import apply_packs
from ..schedule.steps import Tile, from_block, merge
from ..te.autodiff import backward, normalize
from ..te.conv import Algorithm, apply_algorithms
from ..te.expr import Const, Load
from ..te.fold import fold_scales
from ..te.fuse import fuse_elementwise, propagate_copies
from ..te.names import grad_name, grad_of, names_gradient
from ..te.optim import HYPER, HYPER_SIZE
from ..te.pool import fuse_pool, pool_first
from ..te.sparse import sparsify
from ..te.stmt import TStmt
from ..te.weights import split_weights
from .unit import KINDS, TRAINING, Unit

INFERENCE = ("forward", "prepare", "loss")
PROGRAMS = ("forward", "prepare", "loss", "grad", "train")  # every kind with a network's statements


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Unit], Unit]
    kinds: tuple[str, ...]  # the programs it belongs to
    level: str  # what it outputs: te, schedule, loops, plan or llvm
    summary: str  # one line for `dnnc ir --list-stages`


def needed_layers(g: Graph, outputs: tuple[str, ...], with_loss: bool) -> list[Layer]:
    """The layers that `outputs` (and the loss) depend on, in source order."""
    layers = list(g.layers) + ([g.loss] if with_loss and g.loss else [])
    needed = set(outputs) | ({"loss"} if with_loss and g.loss else set())
    keep = []
    for layer in reversed(layers):
        if layer.output in needed:
            keep.append(layer)
            needed |= set(layer.inputs)
    keep.reverse()
    return keep


def _layers(u: Unit) -> list[Layer]:
    job = u.job
    return needed_layers(job.graph, job.outputs or job.graph.outputs, job.with_loss)


def _params(u: Unit) -> tuple[list[str], list[str]]:
    """The parameters of the layers the program needs, and those of them that train."""
    g, layers = u.job.graph, _layers(u)
    params = [p for p in g.params if any(p in layer.params for layer in layers)]
    return params, [p for p in params if p not in g.fixed]


def _reads(groups, writes_first: bool = False) -> dict[str, None]:
    """Every tensor the statements read or write, in order of first use (a statement's own
    tensor before or after its reads)."""
    seen: dict[str, None] = {}
    for _, stmts in groups:
        for st in stmts:
            if writes_first:
                seen.setdefault(st.tensor)
            for x in st.value.walk():
                if isinstance(x, Load):
                    seen.setdefault(x.tensor)
            seen.setdefault(st.tensor)
    return seen


def _kind(name: str, kind: str, finals) -> str:
    return "output" if name in finals else "temp" if kind == "act" else kind


# ----------------------------------------------------------------------------- tensor expressions

def tensor_expressions(u: Unit) -> Unit:
    """The statements of every layer the program needs, a group per layer, and the user's
    schedule steps (the network's `schedule { }` block, then the job's).

    An update program has no layers: its statements come from the `update` stage."""
    job, g = u.job, u.job.graph
    dtype = job.dtype
    if job.kind == "update":
        trainable = [p for p in g.params if p not in g.fixed]
        buffers = [Buffer(HYPER, (HYPER_SIZE,), "hyper", dtype)]
        for p in trainable:
            shape = g.tensors[p].shape
            buffers += [Buffer(p, shape, "param", dtype), Buffer(grad_name(p), shape, "grad", dtype)]
            buffers += [Buffer(s, shape, "state", dtype) for s in job.optimizer.state(p)]
        return u.but(buffers=tuple(buffers), shapes={b.name: b.shape for b in buffers})
    if job.training and g.loss is None:
        raise DnncError(f"network '{g.name}' has no loss; add one, e.g. loss softmax_cross_entropy(logits, label)")
    outputs = job.outputs or g.outputs
    with_loss = job.with_loss
    layers = _layers(u)
    finals = frozenset(outputs) | ({"loss"} if with_loss and g.loss else set())
    steps = list(from_block(g.schedule)) + list(job.schedule.steps)
    groups = [(layer.name, list(layer.inst.stmts)) for layer in layers]
    if not job.training:  # steps for gradients belong to the training program
        steps = [s for s in steps if not names_gradient(s.tensor)]
        used = _reads(groups)
        buffers = tuple(Buffer(t.name, t.shape, _kind(t.name, t.kind, finals), dtype)
                        for t in g.tensors.values() if t.name in used)
        return u.but(groups=groups, finals=finals, steps=tuple(steps), buffers=buffers,
                     shapes={b.name: b.shape for b in buffers})
    return u.but(groups=groups, finals=finals, steps=tuple(steps),
                 shapes={n: t.shape for n, t in g.tensors.items()},
                 kinds={n: t.kind for n, t in g.tensors.items()})


def sparsify_weights(u: Unit) -> Unit:
    """Dense layers whose weights the job names read them in ELL form (te/sparse.py).

    Invariant: the outputs keep their values; W.ell and W.cols become parameters."""
    if not u.job.sparse:
        return u
    groups, made = sparsify(u.groups, dict(u.job.sparse))
    buffers = list(u.buffers) + [Buffer(n, shape, "param", u.job.dtype) for n, shape in made]
    used = _reads(groups)
    buffers = tuple(b for b in buffers if b.name in used)
    return u.but(groups=groups, buffers=buffers, shapes={b.name: b.shape for b in buffers})


def _weights(u: Unit) -> set[str]:
    """The tensors an inference program only reads between weight updates."""
    return {b.name for b in u.buffers if b.kind in ("param", "state")}


def fold_batchnorm(u: Unit) -> Unit:
    """A per-channel scale and shift after a product (an inference batchnorm after a
    convolution or dense layer) folded into the product's weights and bias (te/fold.py).
    With the schedule's defaults only, like the fusions.

    Invariant: every kept tensor gets the same values (up to rounding)."""
    if not u.job.schedule.defaults:
        return u
    groups, made = fold_scales(u.groups, u.keep, u.shapes, _weights(u))
    buffers = u.buffers + tuple(Buffer(n, s, "temp", u.job.dtype) for n, s in made.items())
    return u.but(groups=groups, buffers=buffers, shapes={b.name: b.shape for b in buffers})


def choose_algorithms(u: Unit) -> Unit:
    """Convolutions computed as the algorithm steps say (im2col, Winograd); with the
    schedule's defaults, the target's choices for the convolutions the user's steps leave.

    Invariant: every tensor keeps its values (up to rounding)."""
    job = u.job
    steps = list(u.steps)
    if job.schedule.defaults:
        mine = {s.tensor for s in steps if isinstance(s, Algorithm)}
        chosen = job.target.default_algorithms(u.groups, u.shapes, job.training)
        steps = [a for a in chosen if a.tensor not in mine] + steps
    groups, temps = apply_algorithms(u.groups, steps, u.shapes)
    kinds = dict(u.kinds)
    if job.training:
        kinds.update({t: "temp" for t, _ in temps})
    return u.but(groups=groups, steps=tuple(steps), kinds=kinds)


def normalize_forward(u: Unit) -> Unit:
    """The forward statements in the form the backward differentiates: reductions hoisted,
    argmax companions `T.arg` added (te/autodiff.py).

    Invariant: every tensor of the input is computed with the same values."""
    shapes, kinds, owner = dict(u.shapes), dict(u.kinds), {}
    groups, forward = [], []
    for name, stmts in u.groups:
        stmts, temps = normalize(stmts)
        for t, s in temps:
            shapes[t] = s
            kinds[t] = "temp"
        for st in stmts:
            owner[st.tensor] = name
            shapes.setdefault(st.tensor, tuple(x for _, x in st.axes))
        groups.append((name, stmts))
        forward += stmts
    return u.but(groups=groups, shapes=shapes, kinds=kinds, owner=owner, forward=tuple(forward))


def state_updates(u: Unit) -> Unit:
    """Running statistics updated after the forward pass that computes them."""
    extra = [(layer.name + ".state", list(layer.inst.updates)) for layer in _layers(u) if layer.inst.updates]
    return u.but(groups=list(u.groups) + extra)


def differentiate(u: Unit) -> Unit:
    """The backward pass, derived from the forward statements: d loss / d param in `param.grad`
    for every trainable parameter (zero for one the loss does not depend on)."""
    params, trainable = _params(u)
    shapes, kinds = dict(u.shapes), dict(u.kinds)
    adj, grads, unreached = backward(list(u.forward), shapes, trainable, "loss")
    back: dict[str, list[TStmt]] = {}
    for st, stmts in adj:  # one group per layer's backward, named after the layer
        back.setdefault(grad_name(u.owner[st.tensor]), []).extend(stmts)
    groups = list(u.groups) + [("loss.grad.seed", [TStmt(grad_name("loss"), (), Const(1.0))])]
    groups += list(back.items())
    for gname, s in grads:
        shapes[gname] = s
        kinds[gname] = "grad" if grad_of(gname) in params else "temp"
    shapes[grad_name("loss")] = ()
    kinds.setdefault(grad_name("loss"), "temp")
    for p in unreached:
        gname = grad_name(p)
        shapes[gname] = shapes[p]
        kinds[gname] = "grad"
        groups.append((gname, [TStmt(gname, tuple((f"z{k}", x) for k, x in enumerate(shapes[p])), Const(0.0))]))
    return u.but(groups=groups, shapes=shapes, kinds=kinds)


def optimizer_update(u: Unit) -> Unit:
    """The optimizer's step for every trainable parameter, after its gradient (te/optim.py)."""
    job, g = u.job, u.job.graph
    if job.optimizer is None:
        return u
    if job.kind == "update":
        trainable = [p for p in g.params if p not in g.fixed]
        return u.but(groups=[(p + ".update", job.optimizer.stmts(p, u.shapes[p])) for p in trainable])
    _, trainable = _params(u)
    shapes, kinds = dict(u.shapes), dict(u.kinds)
    shapes[HYPER] = (HYPER_SIZE,)
    kinds[HYPER] = "hyper"
    groups = list(u.groups)
    for p in trainable:
        for s in job.optimizer.state(p):
            shapes[s] = shapes[p]
            kinds[s] = "state"
        groups.append((p + ".update", job.optimizer.stmts(p, shapes[p])))
    return u.but(groups=groups, shapes=shapes, kinds=kinds)


@dataclass(frozen=True)
class Fusion:
    """A tensor-expression fusion (te/pool.py, te/fuse.py) as a stage: groups and the tensors
    to keep (and, `with_shapes`, the shapes) to new groups. It runs only with the schedule's
    defaults; `--no-schedule` keeps every statement in its own nest.

    Invariant of every fusion: each kept tensor gets the same values. `wanted`, where given,
    names the target's attribute that says whether the fusion pays there."""

    fn: Callable
    with_shapes: bool = False
    wanted: str | None = None

    def __call__(self, u: Unit) -> Unit:
        if not u.job.schedule.defaults or (self.wanted and not getattr(u.job.target, self.wanted)):
            return u
        shapes = (u.shapes,) if self.with_shapes else ()
        return u.but(groups=self.fn(u.groups, u.keep, *shapes))

    @property
    def __doc__(self) -> str:
        return self.fn.__doc__ or ""


def collect_buffers(u: Unit) -> Unit:
    """The program's buffers: the tensors its statements use; one a rewrite made is a temporary.

    An inference program keeps the graph's order of tensors; a training program lists its
    parameters in source order and the rest as first used."""
    job = u.job
    if job.kind == "update":
        return u
    if not job.training:
        used = _reads(u.groups, writes_first=True)
        known, made = {b.name for b in u.buffers}, _first_shapes(u.groups)
        buffers = [b for b in u.buffers if b.name in used] + [
            Buffer(n, made.get(n, ()), "temp", job.dtype) for n in used if n not in known]
        return u.but(buffers=tuple(buffers), shapes={b.name: b.shape for b in buffers})
    rank = {p: k for k, p in enumerate(job.graph.params)}
    names = sorted(_reads(u.groups), key=lambda n: rank.get(n, -1))  # parameters in source order, the rest as first used
    buffers = tuple(Buffer(n, u.shapes[n], _kind(n, u.kinds.get(n, "temp"), u.finals), job.dtype) for n in names)
    return u.but(buffers=buffers, shapes={b.name: b.shape for b in buffers})


def _first_shapes(groups) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor written, from the axes of its first writer."""
    shapes: dict[str, tuple[int, ...]] = {}
    for _, stmts in groups:
        for st in stmts:
            shapes.setdefault(st.tensor, tuple(x for _, x in st.axes))
    return shapes


# ----------------------------------------------------------------------------- schedule

def resolve_schedule(u: Unit) -> Unit:
    """The schedule: the target's default steps (with the schedule's defaults), each tensor's
    replaced by the user's; merged here and nowhere else.

    Invariant: every user step names a tensor some statement writes."""
    job = u.job
    flat = [st for _, stmts in u.groups for st in stmts]
    written = {st.tensor for st in flat}
    for s in u.steps:
        if s.tensor not in written and not isinstance(s, Algorithm):
            raise DnncError(f"schedule step {s}: no statement writes {s.tensor} (statements write: "
                            f"{', '.join(sorted(written))})")
    base = job.target.default_schedule(flat, u.shapes, job.dtype) if job.schedule.defaults else []
    steps = merge(base, list(u.steps))
    return u.but(schedule=tuple(steps), tiles={s.key: s for s in steps if isinstance(s, Tile)})


def pack_reads(u: Unit) -> Unit:
    """Reads the Pack steps name become reads of permuted copies, each made right before its
    first use and tiled by the target (schedule/pack.py). Invariant: the same values."""
    shapes, buffers, tiles = dict(u.shapes), list(u.buffers), dict(u.tiles)
    groups, writers = [], {}
    for kname, stmts in u.groups:
        stmts, temps = apply_packs(stmts, list(u.schedule), shapes, writers)
        for t, s in temps:
            shapes[t] = s
            buffers.append(Buffer(t, s, "temp", u.job.dtype))
            tile = u.job.target.pack_tile(t, s, u.job.dtype)
            if tile is not None:  # None: the copy is a plain nest
                tiles.setdefault((t, 0), tile)
        groups.append((kname, stmts))
    return u.but(groups=groups, shapes=shapes, buffers=tuple(buffers), tiles=tiles)


def hoist_weights(u: Unit) -> Unit:
    """A forward pass without its weight-only statements (folded weights, Winograd's filter
    transform, packed weights); a `prepare` program with only them (te/weights.py). What the
    forward pass reads of them becomes a `derived` buffer, kept between calls like a parameter.

    Invariant: running the prepare program, then the forward pass, computes the outputs
    the unsplit forward pass computes."""
    job = u.job
    if job.kind == "forward" and not job.hoist:
        return u
    rest, prepare, derived = split_weights(u.groups, _weights(u), u.keep)
    read = set(_reads(rest))
    kept = rest if job.kind == "forward" else prepare
    used = set(_reads(kept, writes_first=True))
    buffers = tuple(b if b.name not in derived or b.name not in read else
                    Buffer(b.name, b.shape, "derived", b.dtype) for b in u.buffers if b.name in used)
    return u.but(groups=kept, buffers=buffers)


# ----------------------------------------------------------------------------- loops and code

def lower_loops(u: Unit) -> Unit:
    """One kernel of loop nests per group, each statement naive or tiled as its Tile says."""
    prog = lower_groups(u.job.program_name, list(u.buffers), u.groups, u.tiles, u.job.dtype, u.schedule)
    return u.but(program=verify(prog))


@dataclass(frozen=True)
class LoopPass:
    """A loop-IR pass (Program -> Program) as a stage: the verifier runs on what it returns,
    so a faulty pass is a compile error, never wrong code."""

    fn: Callable

    def __call__(self, u: Unit) -> Unit:
        return u.but(program=verify(self.fn(u.program)))

    @property
    def __doc__(self) -> str:
        return self.fn.__doc__ or ""


def bind_loops(u: Unit) -> Unit:
    """The target's binding of loops to its parallel hardware: on a GPU every kernel split
    into launches whose leading independent loops are its threads; nothing on the CPU."""
    target = u.job.target
    return u if target is None else u.but(program=verify(target.bind(u.program)))


def plan_memory(u: Unit) -> Unit:
    """Temporaries placed in one workspace, sharing storage where lifetimes do not overlap."""
    offsets, workspace = plan(u.program)
    return u.but(offsets=offsets, workspace=workspace)


def generate_code(u: Unit) -> Unit:
    """The target's code generator: the planned program as LLVM IR text."""
    job = u.job
    return u.but(llvm_ir=job.target.emit(u.program, u.offsets, job.dtype, job.checks))


ALL = KINDS  # statements given directly (kind `statements`) join at `schedule`
GRAPHS = tuple(k for k in KINDS if k != "statements")
STAGES: list[Stage] = [
    Stage("te", tensor_expressions, GRAPHS, "te",
          "every needed layer's statements, a group per layer; the user's schedule steps"),
    Stage("sparsify", sparsify_weights, ("forward", "prepare"), "te",
          "sparse dense-layer weights read in ELL form"),
    Stage("fold", fold_batchnorm, INFERENCE, "te",
          "a batchnorm after a convolution or dense layer folded into its weights and bias"),
    Stage("algorithms", choose_algorithms, PROGRAMS, "te",
          "convolutions as im2col or Winograd where a step (or the target) says"),
    Stage("pool_first", Fusion(pool_first), PROGRAMS, "te",
          "a monotone activation moved after its max pool"),
    Stage("normalize", normalize_forward, TRAINING, "te",
          "reductions hoisted and argmax companions added, for the backward"),
    Stage("state_updates", state_updates, TRAINING, "te",
          "running statistics updated after the forward pass"),
    Stage("backward", differentiate, TRAINING, "te",
          "the backward pass, by reverse-mode differentiation of the statements"),
    Stage("update", optimizer_update, ("train", "update"), "te",
          "the optimizer's step for every trainable parameter"),
    Stage("copies", Fusion(propagate_copies), INFERENCE, "te",
          "copies of unwritten tensors dropped (an inference batchnorm's statistics)"),
    Stage("fuse_elementwise", Fusion(fuse_elementwise), INFERENCE, "te",
          "elementwise statements in their producer's epilogue"),
    Stage("fuse_pool", Fusion(fuse_pool, with_shapes=True, wanted="fuses_pools"), PROGRAMS, "te",
          "each pool window computed straight from the convolution"),
    Stage("buffers", collect_buffers, GRAPHS, "te",
          "the program's buffers: inputs, parameters, outputs, temporaries"),
    Stage("schedule", resolve_schedule, ALL, "schedule",
          "the target's default steps with the user's in their place"),
    Stage("pack", pack_reads, ALL, "te",
          "reads across lanes made from permuted copies"),
    Stage("weights", hoist_weights, ("forward", "prepare"), "te",
          "weight-only statements moved to the prepare program, run when the weights change"),
    Stage("loops", lower_loops, ALL, "loops",
          "one kernel of loop nests per group, tiled as the schedule says"),
    Stage("split_edges", LoopPass(split_edges), ALL, "loops",
          "masked edges peeled off vector loops"),
    Stage("fold_guards", LoopPass(fold_guards), ALL, "loops",
          "guards the middle iterations satisfy removed"),
    Stage("bind", bind_loops, ALL, "loops",
          "loops bound to the target's parallel hardware (GPU: launches of threads)"),
    Stage("plan", plan_memory, ALL, "plan",
          "temporaries placed in one workspace by liveness"),
    Stage("llvm", generate_code, ALL, "llvm",
          "the target's code generator: LLVM IR text"),
]
FRONT = ("ast", "graph")  # the front end's stages (front/parse.py, front/graph.py), before these
MACHINE = ("llvm-opt", "asm", "ptx")  # views of the target's machine code, after these (ptx: asm)


def names() -> list[str]:
    return list(FRONT) + [s.name for s in STAGES] + list(MACHINE)


def loop_passes() -> list[Stage]:
    """The loop-IR stages after `loops`, in order."""
    k = next(i for i, s in enumerate(STAGES) if s.name == "loops")
    return [s for s in STAGES[k + 1:] if s.level == "loops"]


def loop_stage_names() -> set[str]:
    """`loops` and the loop-IR stages after it: the stages whose output is a loop-nest program."""
    return {"loops"} | {s.name for s in loop_passes()}
