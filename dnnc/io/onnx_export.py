"""dnnc's inference graph as ONNX (`dnnc export`): one node per built-in layer (opset 17), the
batch dimension symbolic ("N"), parameters and running statistics as initializers named like
dnnc's, and, given the training set's normalization, leading Sub and Div nodes on each input,
so the model takes raw pixels as `dnnc run` does. A user-defined op becomes ONNX primitives
(_Translator); a layer with no counterpart is refused with its name.
"""
from __future__ import annotations

import numpy as np

from ..base.errors import DnncError
from .onnx_import import _onnx
from ..base.fileio import atomic_write
from ..front.graph import prelude
from ..te.expr import Binary, Const, Load, Reduce, Select, Unary, Var

OPSET = 17  # LayerNormalization needs 17


def export(net, params: dict[str, np.ndarray], path, normalization: tuple[float, float] | None = None) -> None:
    """The network's inference graph as an ONNX model, checked by onnx.checker. With
    normalization (mean, std), each input is first normalized as (x - mean) / std."""
    onnx, helper, numpy_helper = _onnx()

    g = net.graph
    nodes, inits = [], []
    for name, a in params.items():
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), name))
    for layer in g.layers:
        nodes += _nodes(helper, layer, dict(layer.inst.attrs), g)
    if normalization is not None:
        mean, std = (float(v) for v in normalization)
        if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
            raise DnncError(f"the checkpoint's normalization ({mean}, {std}) is not a mean and a positive std")
        front = []
        for n in g.inputs:
            inits += [numpy_helper.from_array(np.float32(mean), f"{n}.mean"),
                      numpy_helper.from_array(np.float32(std), f"{n}.std")]
            front += [helper.make_node("Sub", [n, f"{n}.mean"], [f"{n}.centered"], f"{n}/sub_mean"),
                      helper.make_node("Div", [f"{n}.centered", f"{n}.std"], [f"{n}.normalized"], f"{n}/div_std")]
        for node in nodes:  # the layers read the normalized inputs
            for k, t in enumerate(node.input):
                if t in g.inputs:
                    node.input[k] = f"{t}.normalized"
        nodes = front + nodes
    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", *g.tensors[n].shape[1:]])
              for n in g.inputs]
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", *g.tensors[n].shape[1:]])
               for n in g.outputs]
    graph = helper.make_graph(nodes, net.name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dnnc")
    onnx.checker.check_model(model)
    atomic_write(path, model.SerializeToString())


def _constant(helper, name: str, value) -> object:
    from onnx import numpy_helper

    return helper.make_node("Constant", [], [name], name, value=numpy_helper.from_array(np.float32(value), name))


def _nodes(helper, layer, a: dict, g) -> list:
    op, x, y, p = layer.op, list(layer.inputs), layer.output, list(layer.params)
    name = layer.name
    if op == "conv":  # without a bias parameter (bias=false), Conv takes no B
        k, s, pad = a["kernel"], a["stride"], a["pad"]
        return [helper.make_node("Conv", x + p, [y], name, kernel_shape=[k, k], strides=[s, s],
                                 pads=[pad] * 4, group=a["groups"])]
    if op == "dense":
        return [helper.make_node("Gemm", x + p, [y], name, transB=1)]
    if op in ("maxpool", "avgpool"):
        kw = {"kernel_shape": [a["size"]] * 2, "strides": [a["stride"]] * 2, "pads": [a["pad"]] * 4}
        if op == "avgpool":
            kw["count_include_pad"] = 0
        return [helper.make_node("MaxPool" if op == "maxpool" else "AveragePool", x, [y], name, **kw)]
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "add": "Add", "global_avgpool": "GlobalAveragePool"}
    if op in simple:
        return [helper.make_node(simple[op], x, [y], name)]
    if op in ("relu6", "clip"):  # Clip takes its bounds as inputs since opset 11
        lo, hi = (0.0, 6.0) if op == "relu6" else (a["lo"], a["hi"])
        return [_constant(helper, f"{name}/min", lo), _constant(helper, f"{name}/max", hi),
                helper.make_node("Clip", x + [f"{name}/min", f"{name}/max"], [y], name)]
    if op == "leaky_relu":
        return [helper.make_node("LeakyRelu", x, [y], name, alpha=float(a["slope"]))]
    if op == "layernorm":
        return [helper.make_node("LayerNormalization", x + p, [y], name, axis=-1, epsilon=float(a["eps"]))]
    if op == "flatten":
        return [helper.make_node("Flatten", x, [y], name, axis=1)]
    if op == "softmax":
        return [helper.make_node("Softmax", x, [y], name, axis=1)]
    if op == "concat":
        return [helper.make_node("Concat", x, [y], name, axis=1)]
    if op == "dropout":  # inference: the identity
        return [helper.make_node("Identity", x, [y], name)]
    if op == "batchnorm":
        stem = p[0].rsplit(".", 1)[0]  # states are named like the layer's parameters
        mean, var = f"{stem}.running_mean", f"{stem}.running_var"
        return [helper.make_node("BatchNormalization", x + p + [mean, var], [y], name, epsilon=float(a["eps"]),
                                 momentum=1.0 - float(a["momentum"]))]
    if op in _builtin_names():
        raise DnncError(f"layer '{layer.name}' ({op}) has no ONNX counterpart", layer.loc)
    return _Translator(helper, layer, g).nodes()


def _builtin_names() -> set[str]:
    return {o.name for o in prelude().ops}
class _Translator:
    """A user-defined op's statements as ONNX nodes: every value a tensor over the statement's
    axes (size-1 where it does not vary), so ONNX's broadcasting lines them up. Reads index each
    dimension by an axis or a constant (a slice); reductions become Reduce* nodes over the
    reduction axes; selects become Where. Anything else is refused by name."""

    UNARY = {"exp": "Exp", "log": "Log", "sqrt": "Sqrt", "tanh": "Tanh", "sigmoid": "Sigmoid", "abs": "Abs",
             "neg": "Neg"}
    BINARY = {"+": "Add", "-": "Sub", "*": "Mul", "/": "Div", "max": "Max", "min": "Min", ">": "Greater",
              "<": "Less", ">=": "GreaterOrEqual", "<=": "LessOrEqual", "==": "Equal", "and": "And", "or": "Or"}
    REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin"}

    def __init__(self, helper, layer, g):
        self.h, self.layer, self.out, self.k = helper, layer, [], 0
        self.shapes = {n: t.shape for n, t in g.tensors.items()}
        self.extent: dict[str, int] = {}

    def fresh(self, stem: str) -> str:
        self.k += 1
        return f"{self.layer.name}/{stem}{self.k}"

    def refuse(self, what: str):
        raise DnncError(f"layer '{self.layer.name}' ({self.layer.op}): {what} has no ONNX translation",
                        self.layer.loc)

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        name = self.fresh(op.lower())
        self.out.append(self.h.make_node(op, inputs, [name], name, **attrs))
        return name

    def const(self, values, dtype=np.int64) -> str:
        from onnx import numpy_helper

        name = self.fresh("const")
        self.out.append(self.h.make_node("Constant", [], [name], name + ":node",
                                         value=numpy_helper.from_array(np.asarray(values, dtype), name)))
        return name

    def nodes(self) -> list:
        stmts = self.layer.inst.stmts
        for k, st in enumerate(stmts):
            if st.index is not None or st.accumulate:
                self.refuse("a scatter")
            axes = [n for n, _ in st.axes]
            self.extent.update(st.axes)
            value = self.expr(st.value, axes)
            self.shapes[st.tensor] = tuple(x for _, x in st.axes)
            target = self.layer.output if k == len(stmts) - 1 else st.tensor
            self.out.append(self.h.make_node("Identity", [value], [target], self.fresh("result")))
        return self.out

    def expr(self, e, axes: list[str]) -> str:
        if isinstance(e, Const):
            return self.const(np.float32(e.value), np.float32)
        if isinstance(e, Load):
            return self.load(e, axes)
        if isinstance(e, Unary) and e.op in self.UNARY:
            return self.node(self.UNARY[e.op], [self.expr(e.a, axes)])
        if isinstance(e, Binary) and e.op in self.BINARY:
            return self.node(self.BINARY[e.op], [self.expr(e.a, axes), self.expr(e.b, axes)])
        if isinstance(e, Select):
            return self.node("Where", [self.expr(e.cond, axes), self.expr(e.a, axes), self.expr(e.b, axes)])
        if isinstance(e, Reduce) and e.op in self.REDUCE:
            self.extent.update(e.axes)
            inner = axes + [n for n, _ in e.axes]
            body = self.expr(e.body, inner)
            where = list(range(len(axes), len(inner)))
            if e.op == "sum":
                return self.node("ReduceSum", [body, self.const(where)], keepdims=0)
            return self.node(self.REDUCE[e.op], [body], axes=where, keepdims=0)
        self.refuse(f"the expression {type(e).__name__} {getattr(e, 'op', '')}".strip())

    def load(self, e, axes: list[str]) -> str:
        """tensor[index] as a tensor over `axes` (size 1 where it does not vary)."""

        t = e.tensor
        consts = [(d, int(ix.value)) for d, ix in enumerate(e.index) if isinstance(ix, Const) and ix.is_int]
        vars_ = [(d, ix.name) for d, ix in enumerate(e.index) if isinstance(ix, Var)]
        if len(consts) + len(vars_) != len(e.index) or any(a not in axes for _, a in vars_):
            self.refuse(f"the read {t}[...] (an index other than an axis or a constant)")
        if any(self.extent.get(a) != self.shapes[t][d] for d, a in vars_):
            self.refuse(f"the read {t}[...] (an axis that runs past the tensor: its reads outside count nothing)")
        order = [axes.index(a) for _, a in vars_]
        if order != sorted(order) or len(set(order)) != len(order):
            self.refuse(f"the read {t}[...] (axes in another order)")
        if consts:  # slice each constant dimension, then drop it
            dims = [d for d, _ in consts]
            t = self.node("Slice", [t, self.const([c for _, c in consts]), self.const([c + 1 for _, c in consts]),
                                    self.const(dims)])
            t = self.node("Squeeze", [t, self.const(dims)])
        missing = [k for k in range(len(axes)) if k not in order]
        if missing:
            t = self.node("Unsqueeze", [t, self.const(missing)])
        return t
