"""ONNX in and out (the optional extra `dnnc[onnx]`): dnnc's built-in layers as ONNX nodes.

Export writes one node per layer (opset 13), the batch dimension symbolic ("N"), parameters
and running statistics as initializers named like dnnc's, and the network's outputs.
Import reads such a graph back into a `.net` file (a binding per node, `|>` pipelines where one
node feeds only the next) and an `.npz` of weights. A layer or node with no counterpart is
refused with its name.
"""
from __future__ import annotations

import numpy as np

from .errors import DnncError

OPSET = 13
# ONNX's LogSoftmax has no built-in layer: the imported file defines it in index notation
LOG_SOFTMAX = """op log_softmax(x[n, k]) -> y[n, k]
{
    m[n] = max(j) x[n, j]
    s[n] = sum(j) exp(x[n, j] - m[n])
    y[n, j] = x[n, j] - m[n] - log(s[n])
}

"""
# words of the .net language and names of built-in layers, which a binding cannot take
RESERVED = {"network", "op", "input", "label", "output", "loss", "train", "schedule", "param", "state", "require",
            "update", "sum", "max", "min", "mean", "argmax", "count", "select", "uniform", "training", "conv", "dense",
            "relu", "sigmoid", "tanh", "maxpool", "avgpool", "flatten", "softmax", "add", "concat", "dropout",
            "batchnorm", "mse", "softmax_cross_entropy", "exp", "log", "sqrt", "abs", "log_softmax"}


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise DnncError("ONNX needs the onnx package: pip install 'dnnc[onnx]'") from None
    return onnx, helper, numpy_helper


# ----------------------------------------------------------------------------- export

def export(net, params: dict[str, np.ndarray], path) -> None:
    """The network's inference graph as an ONNX model, checked by onnx.checker."""
    onnx, helper, numpy_helper = _onnx()
    from .fileio import atomic_write

    g = net.graph
    nodes, inits = [], []
    for name, a in params.items():
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), name))
    for layer in g.layers:
        nodes += _nodes(helper, layer, dict(layer.inst.attrs), g)
    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", *g.tensors[n].shape[1:]])
              for n in g.inputs]
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", *g.tensors[n].shape[1:]])
               for n in g.outputs]
    graph = helper.make_graph(nodes, net.name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dnnc")
    onnx.checker.check_model(model)
    atomic_write(path, model.SerializeToString())


def _nodes(helper, layer, a: dict, g) -> list:
    op, x, y, p = layer.op, list(layer.inputs), layer.output, list(layer.params)
    name = layer.name
    if op == "conv":
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
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "add": "Add"}
    if op in simple:
        return [helper.make_node(simple[op], x, [y], name)]
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
    from .graph import prelude

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
        from .expr import Binary, Const, Load, Reduce, Select, Unary

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
        from .expr import Const, Var

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


# ----------------------------------------------------------------------------- import

MAX_BYTES = 2**31 - 1  # protobuf's limit for one message; DNNC_MAX_ONNX_BYTES lowers or raises it
MAX_ELEMENTS = 2**31 - 1  # in one tensor or one input example


def read_model(path):
    """The ONNX model in path, checked before anything else looks at it: its size bounded
    (and within the memory available), no external data files (they could name any file
    on disk), the ONNX checker passed, every tensor's data as long as its shape says."""
    import os
    from pathlib import Path

    from .api import available_memory
    from .fileio import no_such_file

    onnx, _, numpy_helper = _onnx()
    p = Path(path)
    if not p.exists():
        raise no_such_file(p)
    if not p.is_file():
        raise DnncError("is not a file", path=str(p))
    size = p.stat().st_size
    limit = int(os.environ.get("DNNC_MAX_ONNX_BYTES", MAX_BYTES))
    if size > limit:
        raise DnncError(f"is {size:,} bytes, more than the {limit:,} dnnc reads "
                        f"(DNNC_MAX_ONNX_BYTES sets the limit)", path=str(p))
    free = available_memory()
    if free is not None and 3 * size > free:  # the file, the parsed model and the arrays
        raise DnncError(f"reading this {size:,}-byte model needs about {3 * size:,} bytes of memory; "
                        f"{free:,} are available", path=str(p))
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf's errors vary
        raise DnncError(f"not a readable ONNX model ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                        path=str(p)) from None
    g = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer):
        raise DnncError("keeps its weights in external data files, which dnnc does not read; "
                        "save the model with its weights inside", path=str(p))
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DnncError(f"not a valid ONNX model: {first}", path=str(p)) from None
    inits = {}
    for t in g.initializer:
        n = int(np.prod([int(d) for d in t.dims], dtype=np.float64)) if len(t.dims) else 1
        if any(int(d) < 0 for d in t.dims) or n > MAX_ELEMENTS:
            raise DnncError(f"initializer '{t.name}' has shape {list(t.dims)}, which dnnc does not read",
                            path=str(p))
        try:
            inits[t.name] = numpy_helper.to_array(t).astype(np.float32)
        except Exception as e:
            raise DnncError(f"initializer '{t.name}' cannot be read ({str(e).splitlines()[0] if str(e) else e!r})",
                            path=str(p)) from None
        if inits[t.name].size != n or not np.isfinite(inits[t.name]).all():
            raise DnncError(f"initializer '{t.name}' does not hold {n} finite numbers", path=str(p))
    for i in g.input:
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim][1:]
        if i.name not in inits and np.prod([max(d, 1) for d in dims], dtype=np.float64) > MAX_ELEMENTS:
            raise DnncError(f"input '{i.name}' has shape {dims}, too large for one example", path=str(p))
    return model, inits


def import_model(path) -> tuple[str, dict[str, np.ndarray]]:
    """(the text of a .net file, its weights by dnnc name) for an ONNX model of dnnc's layers."""
    onnx, helper, numpy_helper = _onnx()
    model, inits = read_model(path)
    g = model.graph
    names: dict[str, str] = {}  # ONNX tensor -> dnnc binding
    taken: set[str] = set()

    def ident(raw: str) -> str:
        base = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in raw) or "t"
        base = base if base[0].isalpha() else "t_" + base
        if base in RESERVED:
            base += "_"
        out, k = base, 1
        while out in taken:
            k += 1
            out = f"{base}_{k}"
        taken.add(out)
        return out

    lines, layer_params = [], []  # layer_params: per generated layer, its weights in declaration order
    inputs = [i for i in g.input if i.name not in inits]
    for i in inputs:
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim][1:]
        if not dims or any(d <= 0 for d in dims):
            raise DnncError(f"input '{i.name}' needs a fixed shape after the batch dimension", path=str(path))
        names[i.name] = ident(i.name)
        lines.append(f"    input {names[i.name]}: [{', '.join(map(str, dims))}]")
    readers: dict[str, int] = {}
    for node in g.node:
        for t in node.input:
            readers[t] = readers.get(t, 0) + 1
    for o in g.output:
        readers[o.name] = readers.get(o.name, 0) + 1
    chain: list = []  # the open pipeline: [its calls, the ONNX tensor it ends with]

    def close() -> None:
        """Name the pipeline after the tensor it ends with, and write its line."""
        if chain:
            out = ident(chain[1])
            names[chain[1]] = out
            lines.append(f"    {out} = " + " |> ".join(chain[0]))
            chain.clear()

    for node in g.node:
        a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
        src = [t for t in node.input if t and t not in inits]
        weighted = any(t in inits for t in node.input) and node.op_type != "Reshape"
        piped = bool(chain) and len(src) == 1 and src[0] == chain[1] and readers.get(src[0]) == 1 and not weighted
        if not piped:
            close()
        x = ["_" if piped else names.get(t) for t in src]
        if any(v is None for v in x):
            raise DnncError(f"node '{node.name}' ({node.op_type}) reads a tensor no earlier node writes", path=str(path))
        call, params = _call(node, a, x, inits, path)
        if call is None:  # the identity: the output is the input
            if piped:
                chain[1] = node.output[0]
            else:
                names[node.output[0]] = x[0]
            continue
        layer_params.append(params)
        if piped:  # the next stage: the call without its first argument
            head, _, rest = call.partition("(")
            args = rest[:-1].split(", ", 1)[1:]
            chain[0].append(f"{head}({args[0]})" if args else head)
            chain[1] = node.output[0]
        else:
            chain[:] = [[call], node.output[0]]
    close()
    outs = [names[o.name] for o in g.output]
    uses = any("log_softmax(" in line or "|> log_softmax" in line for line in lines)
    text = (f"# imported from {getattr(path, 'name', str(path).rsplit('/', 1)[-1])} by dnnc import\n"
            + (LOG_SOFTMAX if uses else "") + f"network {ident(g.name or 'imported')} {{\n" + "\n".join(lines) + f"\n    output {', '.join(outs)}\n}}\n")
    return text, layer_params


def _square(a: dict, key: str, node, path, default=1) -> int:
    v = a.get(key, [default, default])
    if len(set(v)) != 1:
        raise DnncError(f"node '{node.name}' ({node.op_type}): {key} {list(v)} differ by dimension; dnnc's layers "
                        f"take one value", path=str(path))
    return int(v[0])


def _pads(a: dict, node, path) -> int:
    p = a.get("pads", [0, 0, 0, 0])
    if len(set(p)) != 1:
        raise DnncError(f"node '{node.name}' ({node.op_type}): asymmetric pads {list(p)}", path=str(path))
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise DnncError(f"node '{node.name}' ({node.op_type}): auto_pad is not supported", path=str(path))
    return int(p[0])


def _call(node, a, x, inits, path):
    """(the .net call, the weights it declares) for one node; (None, ()) for an identity."""
    op = node.op_type
    w = [inits[t] for t in node.input if t in inits]
    if op == "Conv":
        W = w[0]
        if W.shape[2] != W.shape[3] or _square(a, "dilations", node, path) != 1:
            raise DnncError(f"node '{node.name}' (Conv): only square kernels without dilation", path=str(path))
        b = w[1] if len(w) > 1 else np.zeros(W.shape[0], np.float32)
        return (f"conv({x[0]}, filters={W.shape[0]}, kernel={W.shape[2]}, stride={_square(a, 'strides', node, path)}, "
                f"pad={_pads(a, node, path)}, groups={a.get('group', 1)})", (W, b))
    if op in ("Gemm", "MatMul"):
        if op == "Gemm" and (a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0)):
            raise DnncError(f"node '{node.name}' (Gemm): only alpha = beta = 1 without transA", path=str(path))
        if not w:
            raise DnncError(f"node '{node.name}' ({op}): the weight must be an initializer", path=str(path))
        W = w[0] if op == "Gemm" and a.get("transB", 0) else w[0].T
        if W.ndim != 2:
            raise DnncError(f"node '{node.name}' ({op}): a {W.ndim}-D weight (dnnc's dense layer takes a matrix)",
                            path=str(path))
        b = np.zeros(W.shape[0], np.float32)
        if len(w) > 1:
            c = w[1]
            if c.size not in (1, W.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
                raise DnncError(f"node '{node.name}' ({op}): a bias of shape {list(c.shape)} that differs by row",
                                path=str(path))
            b = np.broadcast_to(c.reshape(-1), (W.shape[0],)).astype(np.float32)
        return f"dense({x[0]}, {W.shape[0]})", (W, b)
    if op in ("Relu", "Sigmoid", "Tanh"):
        return f"{op.lower()}({x[0]})", ()
    if op in ("MaxPool", "AveragePool"):
        if op == "AveragePool" and a.get("count_include_pad", 0):
            raise DnncError(f"node '{node.name}' (AveragePool): count_include_pad=1 (dnnc averages the real "
                            f"elements only)", path=str(path))
        size = _square(a, "kernel_shape", node, path)
        if a.get("ceil_mode", 0) or _square(a, "dilations", node, path) != 1:
            raise DnncError(f"node '{node.name}' ({op}): ceil_mode and dilations are not supported", path=str(path))
        return (f"{'maxpool' if op == 'MaxPool' else 'avgpool'}({x[0]}, {size}, "
                f"stride={_square(a, 'strides', node, path)}, pad={_pads(a, node, path)})", ())
    if op in ("Flatten", "Reshape"):
        if op == "Flatten" and a.get("axis", 1) != 1:
            raise DnncError(f"node '{node.name}' (Flatten): axis {a.get('axis')}; dnnc flattens after the batch",
                            path=str(path))
        if op == "Reshape" and not (len(w) == 1 and w[0].size == 2 and w[0][1] == -1):
            raise DnncError(f"node '{node.name}' (Reshape): only a flatten ([N, -1]) has a dnnc layer", path=str(path))
        return f"flatten({x[0]})", ()
    if op == "Softmax":
        if a.get("axis", -1) not in (1, -1):
            raise DnncError(f"node '{node.name}' (Softmax): axis {a.get('axis')}", path=str(path))
        return f"softmax({x[0]})", ()
    if op == "Add" and len(x) == 2:
        return f"add({x[0]}, {x[1]})", ()
    if op == "Concat" and len(x) >= 2 and a.get("axis") == 1:
        if len(x) > 2:
            raise DnncError(f"node '{node.name}' (Concat): {len(x)} inputs; dnnc's concat takes two", path=str(path))
        return f"concat({x[0]}, {x[1]})", ()
    if op == "LogSoftmax":
        if a.get("axis", -1) not in (1, -1):
            raise DnncError(f"node '{node.name}' (LogSoftmax): axis {a.get('axis')}", path=str(path))
        return f"log_softmax({x[0]})", ()
    if op == "BatchNormalization":
        scale, bias, mean, var = w
        return f"batchnorm({x[0]}, eps={float(a.get('epsilon', 1e-5))!r})", (scale, bias, mean, var)
    if op in ("Dropout", "Identity"):
        return None, ()
    raise DnncError(f"node '{node.name}': ONNX op {op} has no dnnc layer (supported: Conv, MaxPool, AveragePool, Relu, "
                    f"Sigmoid, Tanh, Gemm, MatMul, Softmax, Flatten, Reshape as a flatten, Add, Concat, "
                    f"BatchNormalization, Dropout)", path=str(path))


def weights_for(net, layer_params: list[tuple]) -> dict[str, np.ndarray]:
    """The imported weights under the generated network's own names, layer by layer in order
    (an ONNX graph flattens explicitly before Gemm, so no layer is implicit)."""
    out = {}
    for layer, vals in zip(net.graph.layers, layer_params, strict=True):
        stem = layer.params[0].rsplit(".", 1)[0] if layer.params else ""
        names = list(layer.params) + ([f"{stem}.running_mean", f"{stem}.running_var"]
                                      if layer.op == "batchnorm" else [])
        for n, v in zip(names, vals, strict=True):
            shape = net.params[n] if n in net.params else net.graph.state_specs[n].shape
            out[n] = np.asarray(v, np.float32).reshape(shape)
    return out
