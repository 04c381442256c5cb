"""Checking: a network's syntax -> a graph of layers with shapes, parameters and footprint.

Each pipeline stage becomes a Layer: one instance of an op (instantiate.Instance) whose inputs and
output are named tensors. Names are stable and come from the source: a binding `c1 = conv(...)
|> relu` makes layers `c1.conv` and `c1.relu`, output tensor `c1`, and parameters
`c1.weight` and `c1.bias`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..base.errors import DnncError, Loc, did_you_mean
from ..base.fileio import beside_source, load_npy
from .parse import ELLIPSIS, Binding, Call, CallValue, Module, NameRef, Network, OpDef, Stage, parse
from ..te.expr import REDUCE, Expr, Load
from ..te.stmt import RNG_SEED, UNARY_FUNCS
from .instantiate import Instance, ParamSpec, instantiate, without_params

DTYPE_BYTES = 4


@lru_cache(maxsize=1)
def prelude() -> Module:
    path = Path(__file__).with_name("prelude.net")
    return parse(path.read_text(), "prelude.net")


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # with the batch dimension first (rank-0 for a loss)
    kind: str  # input | label | param | act | temp


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    binding: str
    inputs: tuple[str, ...]
    output: str
    params: tuple[str, ...]  # global parameter names, in the op's declaration order
    inst: Instance
    loc: Loc


@dataclass(frozen=True)
class Graph:
    name: str
    batch: int
    tensors: dict[str, Tensor]
    layers: tuple[Layer, ...]
    inputs: tuple[str, ...]
    labels: tuple[str, ...]
    classes: dict[str, int]
    outputs: tuple[str, ...]
    loss: Layer | None
    params: tuple[str, ...]  # in source order
    param_specs: dict[str, ParamSpec] = field(repr=False)
    states: tuple[str, ...] = ()  # persistent non-trainable tensors (running statistics)
    state_specs: dict[str, ParamSpec] = field(default_factory=dict, repr=False)
    training: bool = False
    fixed: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # inline weights
    train: dict = field(default_factory=dict, repr=False)  # the train { } block: name -> (value, loc)
    schedule: dict = field(default_factory=dict, repr=False)  # the schedule { } block: tensor -> (value, loc)


def op_table(module: Module) -> dict[str, OpDef]:
    """The prelude's ops, then the user's (a user op may not redefine a built-in)."""
    ops = {o.name: o for o in prelude().ops}
    for o in module.ops:
        if o.name in ops:
            where = "a built-in op" if ops[o.name] in prelude().ops else f"defined at {ops[o.name].loc}"
            raise DnncError(f"op '{o.name}' is already {where}", o.loc)
        _check_names(o)
        ops[o.name] = o
    for o in module.ops:
        _check_no_op_calls(o, ops)
    return ops


FUNCTIONS = set(UNARY_FUNCS) | set(REDUCE) | {"select", "uniform"}  # what index notation may call


def _check_no_op_calls(o: OpDef, ops: dict[str, OpDef]) -> None:
    """An op's body is index notation over its tensors: it calls functions, never ops, so no
    definition can recurse, directly or through another op."""
    def calls(e):
        if isinstance(e, Call):
            yield e
        for c in e.children() if isinstance(e, Expr) else ():
            yield from calls(c)

    for st in o.body + o.updates:
        for e in calls(st.value):
            if e.fn in ops and e.fn not in FUNCTIONS:
                rule = ("an op body is index notation over its tensors and calls only functions "
                        "(exp, log, max, ...)")
                if e.fn == o.name:
                    raise DnncError(f"op '{o.name}' calls itself: {rule}, so an op cannot recurse", e.loc or st.loc)
                raise DnncError(f"op '{o.name}' calls the op '{e.fn}': {rule}; compose ops in the network "
                                f"instead, as y = x |> {e.fn} |> {o.name}", e.loc or st.loc)


def _check_names(o: OpDef) -> None:
    """Inputs, output, attributes, parameters and states of an op need distinct names."""
    seen: dict[str, str] = {}
    decls = ([(d.name, "an input", d.loc) for d in o.inputs] + [(o.output.name, "the output", o.output.loc)]
             + [(a.name, "an argument", a.loc) for a in o.attrs]
             + [(p.name, "a parameter", p.loc) for p in o.params] + [(p.name, "a state", p.loc) for p in o.states])
    for name, kind, loc in decls:
        if name in seen:
            raise DnncError(f"{o.name}: '{name}' is declared twice (first as {seen[name]})", loc)
        seen[name] = kind


def pick_network(module: Module, name: str | None = None) -> Network:
    if not module.networks:
        raise DnncError("no network in this file (write: network NAME { ... })", path=module.file)
    if name is None:
        return module.networks[0]
    for n in module.networks:
        if n.name == name:
            return n
    raise DnncError(f"no network named '{name}' (have: {', '.join(n.name for n in module.networks)})",
                    path=module.file)


def build(module: Module, batch: int = 1, network: str | None = None, training: bool = False) -> Graph:
    """Check a network and instantiate every layer for `batch` examples (in training mode,
    ops such as dropout and batchnorm take their training behaviour)."""
    ops = op_table(module)
    net = pick_network(module, network)
    b = _Builder(ops, batch, training)
    return b.network(net)


class _Builder:
    def __init__(self, ops: dict[str, OpDef], batch: int, training: bool = False):
        self.ops = ops
        self.batch = batch
        self.training = training
        self.states: list[str] = []
        self.state_specs: dict[str, ParamSpec] = {}
        self.tensors: dict[str, Tensor] = {}
        self.bound_at: dict[str, Loc] = {}
        self.layers: list[Layer] = []
        self.params: list[str] = []
        self.param_specs: dict[str, ParamSpec] = {}
        self.fixed: dict[str, np.ndarray] = {}

    def define(self, name: str, tensor: Tensor, loc: Loc) -> None:
        if name in self.bound_at:
            raise DnncError(f"'{name}' is already bound at line {self.bound_at[name].line}", loc)
        self.tensors[name] = tensor
        self.bound_at[name] = loc

    def network(self, net: Network) -> Graph:
        later = {bd.name: bd.loc for bd in net.bindings}
        self.later = later
        inputs, labels, classes = [], [], {}
        for name, shape, loc in net.inputs:
            if any(d < 1 for d in shape):
                raise DnncError(f"input '{name}' has a dimension below 1: {list(shape)}", loc)
            self.define(name, Tensor(name, (self.batch,) + shape, "input"), loc)
            inputs.append(name)
        for name, n, loc in net.labels:
            if isinstance(n, tuple):  # real-valued targets, e.g. for mse
                if any(d < 1 for d in n):
                    raise DnncError(f"label '{name}' has a dimension below 1: {list(n)}", loc)
                self.define(name, Tensor(name, (self.batch,) + n, "label"), loc)
                labels.append(name)
                continue
            if n < 1:
                raise DnncError(f"label '{name}' needs at least one class, got {n}", loc)
            self.define(name, Tensor(name, (self.batch,), "label"), loc)
            labels.append(name)
            classes[name] = n
        if not inputs:
            raise DnncError(f"network '{net.name}' has no input (write: input x: [1, 28, 28])", net.loc)
        for bd in net.bindings:
            self.binding(bd)
        outputs = []
        for name, loc in net.outputs:
            self.tensor_ref(NameRef(name, loc))
            if name in inputs:
                raise DnncError(f"'{name}' is an input; an output must be computed by a layer", loc)
            if name in outputs:
                raise DnncError(f"'{name}' is already an output", loc)
            outputs.append(name)
        if not outputs:
            if not net.bindings:
                raise DnncError(f"network '{net.name}' computes nothing", net.loc)
            outputs.append(net.bindings[-1].name)
        loss = None
        if net.loss is not None:
            first = net.loss[0]
            self.chain(Binding("loss", net.loss, first.loc))
            loss = self.layers.pop()
            if self.tensors["loss"].shape != ():
                raise DnncError(f"the loss must be a single number, but '{first.op}' gives shape "
                                f"{list(self.tensors['loss'].shape)}", first.loc)
            self.check_classes(loss, classes)
        return Graph(net.name, self.batch, dict(self.tensors), tuple(self.layers), tuple(inputs),
                     tuple(labels), classes, tuple(outputs), loss, tuple(self.params),
                     dict(self.param_specs), tuple(self.states), dict(self.state_specs), self.training,
                     dict(self.fixed), {s.name: (s.value, s.loc) for s in net.train},
                     {s.name: (s.value, s.loc) for s in net.schedule})

    def check_classes(self, loss: Layer, classes: dict[str, int]) -> None:
        """A loss that reads class labels scores as many classes as the label has: a class
        number beyond the scores would read nothing and give a meaningless loss."""
        for lab in (t for t in loss.inputs if t in classes):
            for t in loss.inputs:
                shape = self.tensors[t].shape
                if t != lab and len(shape) == 2 and shape[1] != classes[lab]:
                    raise DnncError(f"{loss.op}: '{t}' scores {shape[1]} classes but label '{lab}' has "
                                    f"{classes[lab]}; give '{t}' {classes[lab]} outputs (e.g. "
                                    f"dense(..., {classes[lab]}))", loss.loc)

    def tensor_ref(self, ref: NameRef) -> str:
        if ref.name in self.tensors and self.tensors[ref.name].kind != "param":
            return ref.name
        if ref.name in self.later:
            raise DnncError(f"'{ref.name}' is used before it is bound (at line {self.later[ref.name].line})", ref.loc)
        if ref.name in self.ops:
            raise DnncError(f"'{ref.name}' is an op, not a tensor", ref.loc)
        bound = [n for n, t in self.tensors.items() if t.kind not in ("param", "state", "temp")]
        raise DnncError(f"unknown tensor '{ref.name}'{did_you_mean(ref.name, bound)}", ref.loc)

    def binding(self, bd: Binding) -> None:
        if bd.name in self.ops:
            raise DnncError(f"'{bd.name}' is the name of an op; choose another name", bd.loc)
        self.chain(bd)

    def chain(self, bd: Binding) -> None:
        stages = list(bd.stages)
        first = stages[0]
        current = None
        if not first.called:
            current = self.tensor_ref(NameRef(first.op, first.loc))
            stages = stages[1:]
            if not stages:
                raise DnncError("a binding needs an op: write y = relu(x) or y = x |> relu", bd.loc)
        n_param_ops = sum(1 for s in stages if s.op in self.ops and (self.ops[s.op].params or self.ops[s.op].states))
        counts: dict[str, int] = {}
        for k, st in enumerate(stages):
            if st.op not in self.ops:
                raise DnncError(f"unknown op '{st.op}'{did_you_mean(st.op, self.ops)}", st.loc)
            op = self.ops[st.op]
            counts[st.op] = counts.get(st.op, 0) + 1
            lname = bd.name if len(stages) == 1 else f"{bd.name}.{st.op}" + (
                str(counts[st.op]) if counts[st.op] > 1 else "")
            pprefix = bd.name if n_param_ops <= 1 else lname
            out = bd.name if k == len(stages) - 1 else lname
            current = self.stage(bd, st, op, current, lname, pprefix, out)

    def stage(self, bd: Binding, st: Stage, op: OpDef, piped: str | None, lname: str, pprefix: str,
              out: str) -> str:
        tensor_inputs: list[str | None] = [None] * len(op.inputs)
        attrs: dict = {}
        fixed: dict[str, tuple[object, Loc]] = {}
        dropped: set[str] = set()
        slot = 0
        if piped is not None:
            tensor_inputs[0] = piped
            slot = 1
        attr_names = [a.name for a in op.attrs]
        attr_slot = 0
        input_names = [d.name for d in op.inputs]
        param_names = [p.name for p in op.params]
        for arg in st.args:
            if arg.key is None:
                if slot < len(op.inputs):
                    if not isinstance(arg.value, NameRef):
                        got = f"a call of {arg.value.name}(...); bind it to a name first" if isinstance(
                            arg.value, CallValue) else repr(arg.value)
                        raise DnncError(f"{op.name}: input '{op.inputs[slot].name}' must be a tensor name, "
                                        f"got {got}", arg.loc)
                    tensor_inputs[slot] = self.tensor_ref(arg.value)
                    slot += 1
                else:
                    while attr_slot < len(attr_names) and attr_names[attr_slot] in attrs:
                        attr_slot += 1
                    if attr_slot >= len(attr_names):
                        raise DnncError(f"{op.name}: too many arguments", arg.loc)
                    attrs[attr_names[attr_slot]] = self.attr_value(op, arg.value, arg.loc)
                    attr_slot += 1
                continue
            key = arg.key
            if key == "weights" and "weight" in param_names:
                key = "weight"
            if key in input_names:
                if not isinstance(arg.value, NameRef):
                    raise DnncError(f"{op.name}: input '{key}' must be a tensor name", arg.loc)
                tensor_inputs[input_names.index(key)] = self.tensor_ref(arg.value)
            elif key in param_names and isinstance(arg.value, NameRef) and arg.value.name in ("false", "true"):
                if arg.value.name == "false":  # no such parameter: it reads as 0 (conv without bias)
                    dropped.add(key)
            elif key in param_names:
                fixed[key] = (arg.value, arg.loc)
            elif key in attr_names:
                if key in attrs:
                    raise DnncError(f"{op.name}: argument '{key}' given twice", arg.loc)
                attrs[key] = self.attr_value(op, arg.value, arg.loc)
            else:
                known = input_names[1 if piped else 0:] + attr_names + param_names
                raise DnncError(f"{op.name}: unknown argument '{arg.key}'{did_you_mean(arg.key, known)} "
                                f"(takes: {', '.join(known)})", arg.loc)
        for k, t in enumerate(tensor_inputs):
            if t is None:
                raise DnncError(f"{op.name}: missing input '{op.inputs[k].name}'", st.loc)

        # a tensor of higher rank feeds a [n, k] input flattened (dense after conv)
        shapes = [self.tensors[t].shape for t in tensor_inputs]  # type: ignore[index]
        if (len(op.inputs) >= 1 and len(op.inputs[0].dims) == 2 and ELLIPSIS not in op.inputs[0].dims
                and len(shapes[0]) == 4 and op.name != "flatten"):
            flat = f"{bd.name}.flatten"
            tensor_inputs[0] = self.stage(bd, Stage("flatten", (), True, st.loc), self.ops["flatten"],
                                          tensor_inputs[0], flat, pprefix, flat)
            shapes[0] = self.tensors[tensor_inputs[0]].shape

        names = {d.name: t for d, t in zip(op.inputs, tensor_inputs)}
        names[op.output.name] = out
        inst = instantiate(op, shapes, attrs, names, pprefix if op.params or op.states else lname, st.loc,
                           self.training)
        if dropped:
            inst = without_params(inst, pprefix, dropped)
        params = []
        for kind, specs, names_, table in (("param", inst.params, self.params, self.param_specs),
                                           ("state", inst.states, self.states, self.state_specs)):
            for p in specs:
                gname = f"{pprefix}.{p.name}"
                if gname in self.tensors:
                    raise DnncError(f"{kind} name '{gname}' is taken; use separate bindings", st.loc)
                self.tensors[gname] = Tensor(gname, p.shape, kind)
                names_.append(gname)
                table[gname] = p
                if kind == "param":
                    params.append(gname)
                    if p.name in fixed:
                        self.fixed[gname] = self.inline_weights(op, p, *fixed[p.name])
        for t, shape in inst.temps:
            self.tensors[t] = Tensor(t, shape, "temp")
        if RNG_SEED not in self.tensors and any(
                isinstance(x, Load) and x.tensor == RNG_SEED for s in inst.stmts + inst.updates for x in s.value.walk()):
            self.tensors[RNG_SEED] = Tensor(RNG_SEED, (1,), "hyper")
        self.define(out, Tensor(out, inst.out_shape, "act"), st.loc if out != bd.name else bd.loc)
        self.layers.append(Layer(lname, op.name, bd.name, tuple(tensor_inputs), out, tuple(params), inst, st.loc))  # type: ignore[arg-type]
        return out

    def attr_value(self, op: OpDef, value, loc: Loc):
        if isinstance(value, (NameRef, CallValue)):
            raise DnncError(f"{op.name}: expected a number, got '{value.name}'", loc)
        if isinstance(value, (list, str)):
            raise DnncError(f"{op.name}: expected a number, got {value!r}", loc)
        return value

    def inline_weights(self, op: OpDef, p: ParamSpec, value, loc: Loc) -> np.ndarray:
        if isinstance(value, str):  # an .npy file beside the .net file
            path = beside_source(value, loc)
            try:
                value = load_npy(path)
            except DnncError as e:
                raise DnncError(f"{op.name}: '{p.name}' from '{value}': {e.message}", loc) from None
        try:
            arr = np.array(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise DnncError(f"{op.name}: '{p.name}' must be a number or a nested list of numbers of equal "
                            f"lengths", loc) from None
        if arr.dtype == object or not np.isfinite(arr).all():
            raise DnncError(f"{op.name}: '{p.name}' must hold finite numbers", loc)
        try:
            return np.broadcast_to(arr, p.shape).astype(np.float32)
        except ValueError:
            raise DnncError(f"{op.name}: '{p.name}' has shape {list(arr.shape)}, which does not fit the "
                            f"parameter's shape {list(p.shape)}", loc) from None
