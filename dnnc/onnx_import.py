"""ONNX -> a readable .net file and its weights (`dnnc import`).

Each node becomes a call of a built-in layer where one fits (conv, dense, maxpool, relu6, ...),
else of an op the imported file defines itself in index notation for what the node needs
(`op conv2d` with dilations or asymmetric pads, `op maxpool2d_ceil`, `op softmax_axis1`, ...;
see onnx_ops), so dnnc compiles it like any op. Constant subgraphs, such as PyTorch's
Shape -> Gather -> Unsqueeze -> Concat feeding a Reshape, are folded on import. Bindings are
named after the nodes (PyTorch's `/layer1/layer1.0/conv1/Conv` gives `layer1_0_conv1`), or
after their tensor where it has a name of its own.

ONNX's first dimension is dnnc's batch. A graph that mixes examples along it (Flatten at axis 0,
Concat on axis 0, a weight that varies along it, 1-D tensors, softmax over it) is imported
"whole" when its inputs have fixed shapes: each input is one example of its full ONNX shape.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import onnx_ops as ops
from .errors import DnncError

MAX_BYTES = 2**31 - 1  # protobuf's limit for one message; DNNC_MAX_ONNX_BYTES lowers or raises it
MAX_ELEMENTS = 2**31 - 1  # in one tensor or one input example
KEYWORDS = {"network", "op", "input", "label", "output", "loss", "train", "schedule", "param", "state", "require",
            "update", "sum", "max", "min", "mean", "argmax", "count", "select", "uniform", "training", "exp", "log",
            "sqrt", "abs", "true", "false", "and", "or", "not"}
SUPPORTED = ("Conv, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Relu, Sigmoid, Tanh, LeakyRelu, PRelu, "
             "Elu, Selu, HardSigmoid, HardSwish, Softplus, Clip, Neg, Exp, Log, Sqrt, Abs, Gemm, MatMul, Softmax, "
             "LogSoftmax, Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Add, Sub, Mul, Div, Concat, "
             "BatchNormalization, LayerNormalization, Dropout, Identity, and constant subgraphs (Constant, Shape, ...)")


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise DnncError("ONNX needs the onnx package: pip install 'dnnc[onnx]'") from None
    return onnx, helper, numpy_helper


def read_model(path):
    """The ONNX model in path, checked before anything else looks at it: its size bounded
    (and within the memory available), no external data files (they could name any file
    on disk), the ONNX checker passed, every tensor's data as long as its shape says."""
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
            a = numpy_helper.to_array(t)
            inits[t.name] = a.astype(np.int64 if a.dtype.kind in "iub" else np.float32, copy=False)
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


def import_model(path) -> tuple[str, list[tuple]]:
    """(the text of a .net file, per layer the weights it declares) for an ONNX model."""
    model, inits = read_model(path)
    try:
        return _Importer(model, inits, path, whole=False).run()
    except _Whole as e:
        inputs = [i for i in model.graph.input if i.name not in inits]
        free = [i.name for i in inputs if not all(d.dim_value > 0 for d in i.type.tensor_type.shape.dim)]
        if free:
            raise DnncError(f"{e.where}: {e.why}, but dnnc's first dimension is the batch; a graph that mixes "
                            f"examples is imported whole only with fixed input shapes, and input '{free[0]}' has a "
                            f"symbolic one", path=str(path)) from None
        return _Importer(model, inits, path, whole=True, why=f"{e.where}: {e.why}").run()


def weights_for(net, layer_params: list[tuple]) -> dict[str, np.ndarray]:
    """The imported weights under the generated network's own names, layer by layer in order:
    each layer's parameters, then its states (running statistics)."""
    out = {}
    for layer, vals in zip(net.graph.layers, layer_params, strict=True):
        stem = layer.params[0].rsplit(".", 1)[0] if layer.params else ""
        names = list(layer.params) + [f"{stem}.{s.name}" for s in layer.inst.states]
        for n, v in zip(names, vals, strict=True):
            shape = net.params[n] if n in net.params else net.graph.state_specs[n].shape
            out[n] = np.asarray(v, np.float32).reshape(shape)
    return out


def _infer_shapes(model, inits, known: dict | None = None):
    """The graph with ONNX's shape inference run over it, on a copy that declares large weights
    by their shapes only (inference would otherwise copy them); small constants stay, since
    shape computations read them. `known` adds shapes found on the way (a reshape's output)."""
    onnx, helper, _ = _onnx()
    g = model.graph
    big = {t.name for t in g.initializer if inits[t.name].size > 64}
    declared = {i.name for i in g.input}
    hints = [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, [d if d else "N" for d in s])
             for t, s in (known or {}).items() if t not in declared]
    light = helper.make_graph(
        g.node, g.name, list(g.input) + [helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                         for t in g.initializer if t.name in big and t.name not in declared],
        g.output, [t for t in g.initializer if t.name not in big], value_info=list(g.value_info) + hints)
    try:
        m = helper.make_model(light, opset_imports=model.opset_import, ir_version=model.ir_version)
        return onnx.shape_inference.infer_shapes(m, data_prop=True).graph
    except Exception:  # the shapes the file gives, if any
        return g


class _Whole(Exception):
    """This graph mixes examples along its first dimension: import it whole."""

    def __init__(self, where: str, why: str):
        self.where, self.why = where, why


@dataclass
class _Call:
    """One layer of the generated network."""

    fn: str
    ins: list  # the ONNX tensors it reads
    args: list  # its other arguments, as text
    params: tuple  # its weights: parameters, then states, in the op's declaration order
    out: str  # the ONNX tensor it writes
    node: object


def _num(v) -> str:
    v = np.float32(v)
    if not np.isfinite(v):
        raise ValueError(v)
    return np.format_float_positional(v, unique=True, trim="0")


def _same(a, b) -> bool:
    return np.float32(a) == np.float32(b)


def _readable(tensor: str) -> bool:
    """A tensor name of its own, not one an exporter made up (PyTorch's /conv1/Conv_output_0, onnx::Conv_5)."""
    return bool(re.fullmatch(r"[A-Za-z_][\w.]*", tensor)) and not re.search(r"_output_\d+$|^onnx::", tensor)


def _node_name(node) -> str:
    """PyTorch's scope path without its op type, each module once: /layer1/layer1.0/conv1/Conv -> layer1.0.conv1."""
    parts = [p for p in node.name.split("/") if p]
    if len(parts) > 1:
        parts = parts[:-1]
    elif parts and re.fullmatch(rf"{node.op_type}(_\d+)?", parts[0]):
        parts = [parts[0].lower()]
    return ".".join(p for k, p in enumerate(parts) if k + 1 == len(parts) or not parts[k + 1].startswith(p + "."))


class _Importer:
    def __init__(self, model, inits, path, whole: bool, why: str = ""):
        onnx, self.helper, _ = _onnx()
        self.model, self.g, self.path, self.whole, self.why = model, model.graph, path, whole, why
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.consts = {k: (v, v) for k, v in inits.items()}  # value at two batch sizes (Shape depends on it)
        self.shapes, self.types = {}, {}
        self.inits = inits
        self.learn(_infer_shapes(model, inits))
        self.found: dict[str, tuple] = {}  # shapes the importer worked out that inference had not
        self.alias: dict[str, str] = {}
        self.acts: set[str] = set()
        self.calls: list[_Call] = []
        self.ops: dict[str, str] = {}  # generated op text -> its name

    # ------------------------------------------------------------------ helpers

    def learn(self, typed) -> None:
        """Record the element types and shapes that shape inference found."""
        for vi in [*typed.input, *typed.value_info, *typed.output]:
            t = vi.type.tensor_type
            self.types.setdefault(vi.name, t.elem_type)
            if t.HasField("shape"):
                s = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
                old = self.shapes.get(vi.name)
                if old is None or sum(d is None for d in old) > sum(d is None for d in s):
                    self.shapes[vi.name] = s

    def where(self, node) -> str:
        return f"node '{node.name or node.output[0]}' ({node.op_type})"

    def refuse(self, node, what: str):
        raise DnncError(f"{self.where(node)}: {what}", path=str(self.path))

    def batch_only(self, node, why: str) -> None:
        """The node mixes examples: in batch mode, start again whole."""
        if not self.whole:
            raise _Whole(self.where(node), why)

    def resolve(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def act(self, node, k: int) -> str:
        t = node.input[k]
        if self.resolve(t) not in self.acts:
            self.refuse(node, f"input '{t}' must be computed by the graph")
        return t

    def const(self, node, t: str, what: str = "this input"):
        if t not in self.consts:
            self.refuse(node, f"{what} ('{t}') must be a constant (an initializer)")
        a, b = self.consts[t]
        if a is not b and (a.shape != b.shape or not np.array_equal(a, b)):
            self.refuse(node, f"{what} ('{t}') depends on the batch size")
        return a

    def opt(self, node, k: int):
        return node.input[k] if len(node.input) > k and node.input[k] else None

    def oshape(self, node, t: str) -> tuple:
        """The ONNX shape of tensor t, every dimension after the batch known."""
        def known():
            s = self.shapes.get(self.resolve(t), self.shapes.get(t))
            return s if s is not None and all(d is not None for d in s[0 if self.whole else 1:]) else None

        if known() is None and self.found:  # infer again from the shapes found since (a reshape's)
            self.learn(_infer_shapes(self.model, self.inits, {**self.shapes, **self.found}))
            self.found = {}
        if known() is None:
            self.refuse(node, f"the shape of '{t}' is not known")
        return known()

    def dshape(self, node, t: str) -> tuple:
        """dnnc's shape of t: the batch ('N') first, or 1 in front of the ONNX shape when whole."""
        s = self.oshape(node, t)
        return (1, *s) if self.whole else ("N", *s[1:])

    def define(self, spec: tuple[str, str]) -> str:
        """The name of the generated op with this text, defining it if new."""
        base, text = spec
        if text not in self.ops:
            taken = set(self.ops.values())
            name, k = base, 1
            while name in taken:
                k += 1
                name = f"{base}_{k}"
            self.ops[text] = name
        return self.ops[text]

    def emit(self, node, fn, ins, args=(), params=(), out=None) -> None:
        out = out or node.output[0]
        self.calls.append(_Call(fn, list(ins), [a for a in args if a], tuple(params), out, node))
        self.acts.add(out)

    def same(self, node, x=None) -> None:
        """The node's output is its input."""
        self.alias[node.output[0]] = x or node.input[0]

    # ------------------------------------------------------------------ the graph

    def run(self) -> tuple[str, list[tuple]]:
        onnx = _onnx()[0]
        inputs = [i for i in self.g.input if i.name not in self.consts]
        for i in inputs:
            t = i.type.tensor_type
            dims = [d.dim_value for d in t.shape.dim]
            if not i.type.HasField("tensor_type"):
                raise DnncError(f"input '{i.name}' is not a tensor", path=str(self.path))
            if t.elem_type != onnx.TensorProto.FLOAT:
                raise DnncError(f"input '{i.name}' holds {onnx.TensorProto.DataType.Name(t.elem_type).lower()}; "
                                f"dnnc computes in float32", path=str(self.path))
            if not self.whole and len(dims) < 2:
                raise _Whole(f"input '{i.name}'", f"it has rank {len(dims)}, no dimension besides the batch")
            if not dims or any(d <= 0 for d in dims[0 if self.whole else 1:]):
                raise DnncError(f"input '{i.name}' needs a fixed shape after the batch dimension", path=str(self.path))
            self.shapes[i.name] = tuple(d or None for d in dims)
            self.acts.add(i.name)
        for node in self.g.node:
            self.node(node)
        outs, self.prefer = [], {}
        for o in self.g.output:
            t = self.resolve(o.name)
            if self.types.get(o.name, onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT:
                raise DnncError(f"output '{o.name}' is not float32", path=str(self.path))
            if t not in self.acts:
                raise DnncError(f"output '{o.name}' is a constant, which no layer computes", path=str(self.path))
            if t in {i.name for i in inputs} or t in outs:  # a copy, so each output is a layer of its own
                self.calls.append(_Call(self.define(ops.IDENTITY), [t], [], (), o.name, None))
                t = o.name
            self.prefer.setdefault(t, o.name)  # the binding takes the output's name
            outs.append(t)
        return self.render(inputs, outs)

    def node(self, node) -> None:
        a = {at.name: self.helper.get_attribute_value(at) for at in node.attribute}
        a = {k: v.decode() if isinstance(v, bytes) else v for k, v in a.items()}
        if node.op_type == "Shape" and node.input[0] not in self.consts:
            s = np.array([self.oshape(node, node.input[0])[k] if k or self.whole else None
                          for k in range(len(self.oshape(node, node.input[0])))], dtype=object)
            lo, hi = a.get("start", 0), a.get("end", len(s))
            pair = []
            for batch in (101, 103):  # two batch sizes: what depends on the batch differs
                v = s.copy()
                if not self.whole:
                    v[0] = batch
                pair.append(v.astype(np.int64)[lo:hi])
            self.consts[node.output[0]] = tuple(pair)
            return
        if all(not t or t in self.consts for t in node.input):
            if node.op_type.startswith("Random") or node.op_type in ("Bernoulli", "Multinomial"):
                self.refuse(node, "random numbers")
            self.fold(node)
            return
        handler = getattr(self, f"op_{node.op_type}", None)
        if handler is None:
            raise DnncError(f"node '{node.name or node.output[0]}': ONNX op {node.op_type} has no dnnc layer "
                            f"(supported: {SUPPORTED})", path=str(self.path))
        try:
            handler(node, a)
        except ValueError:  # a number dnnc cannot write (nan, inf)
            self.refuse(node, "an attribute or constant that is not a finite number")

    def fold(self, node) -> None:
        """A node of constants, computed now by ONNX's reference implementation (at both batch sizes)."""
        from onnx import helper
        from onnx.helper import np_dtype_to_tensor_dtype
        from onnx.reference import ReferenceEvaluator

        results = []
        for k in (0, 1):
            feeds = {t: self.consts[t][k] for t in node.input if t}
            vis = [helper.make_tensor_value_info(t, np_dtype_to_tensor_dtype(v.dtype), v.shape) for t, v in feeds.items()]
            g = helper.make_graph([node], "fold", vis, [helper.make_empty_tensor_value_info(o) for o in node.output if o])
            try:
                m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
                results.append([np.asarray(r) for r in ReferenceEvaluator(m).run(None, feeds)])
            except Exception as e:
                self.refuse(node, f"cannot compute this constant ({str(e).splitlines()[0][:100] if str(e) else e!r})")
        for o, r0, r1 in zip([o for o in node.output if o], *results):
            self.consts[o] = (r0.astype(np.float32) if r0.dtype.kind == "f" else r0,
                              r1.astype(np.float32) if r1.dtype.kind == "f" else r1)

    # ------------------------------------------------------------------ layers

    def window(self, node, a, spatial, kernel):
        """(strides, dilations, pads at the start, pads at the end), from pads or auto_pad."""
        nd = len(kernel)
        strides, dil = list(a.get("strides", [1] * nd)), list(a.get("dilations", [1] * nd))
        auto = a.get("auto_pad", "NOTSET")
        if auto in ("NOTSET", ""):
            p = list(a.get("pads", [0] * 2 * nd))
            return strides, dil, p[:nd], p[nd:]
        if auto == "VALID":
            return strides, dil, [0] * nd, [0] * nd
        begin, end = [], []
        for x, k, s, d in zip(spatial, kernel, strides, dil):  # SAME: the output is ceil(x / stride)
            total = max(((x + s - 1) // s - 1) * s + (k - 1) * d + 1 - x, 0)
            b = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(b)
            end.append(total - b)
        return strides, dil, begin, end

    @staticmethod
    def window_args(kernel, strides, dil, begin, end) -> list[str]:
        ax = ops.AXES[len(kernel)]
        out = [f"kernel_{x}={k}" for x, k in zip(ax, kernel)]
        for key, vals, default in (("stride", strides, 1), ("dilation", dil, 1), ("pad", begin, 0),
                                   ("pad_{}_end", end, 0)):
            for x, v in zip(ax, vals):
                if v != default:
                    out.append(f"{key.format(x) if '{' in key else f'{key}_{x}'}={v}")
        return out

    def op_Conv(self, node, a):
        x = self.act(node, 0)
        w = self.const(node, node.input[1], "the weight")
        b = self.const(node, node.input[2], "the bias") if self.opt(node, 2) else None
        s, nd = self.dshape(node, x), w.ndim - 2
        if nd not in ops.AXES:
            self.refuse(node, f"a {nd}-D convolution")
        kernel = list(w.shape[2:])
        strides, dil, begin, end = self.window(node, a, s[-nd:], kernel)
        group, filters = int(a.get("group", 1)), w.shape[0]
        params = (w,) if b is None else (w, b)
        nobias = "bias=false" if b is None else ""
        if not self.whole and nd == 2 and len(set(kernel)) == len(set(strides)) == len(set(begin + end)) == 1 \
                and dil == [1, 1]:
            args = [f"filters={filters}", f"kernel={kernel[0]}", f"stride={strides[0]}" if strides[0] != 1 else "",
                    f"pad={begin[0]}" if begin[0] else "", f"groups={group}" if group != 1 else "", nobias]
            return self.emit(node, "conv", [x], args, params)
        args = [f"filters={filters}"] + self.window_args(kernel, strides, dil, begin, end) + [
            f"groups={group}" if group != 1 else "", nobias]
        self.emit(node, self.define(ops.conv(len(s), nd)), [x], args, params)

    def pool(self, node, a, kind: str):
        if len(node.output) > 1 and node.output[1]:
            self.refuse(node, "the Indices output")
        x, kernel = self.act(node, 0), list(a["kernel_shape"])
        s, nd = self.dshape(node, x), len(kernel)
        strides, dil, begin, end = self.window(node, a, s[-nd:], kernel)
        ceil = bool(a.get("ceil_mode", 0))
        count_pad = kind == "avg" and bool(a.get("count_include_pad", 0)) and any(begin + end)
        if nd not in ops.AXES or len(s) != nd + 2 + self.whole:
            self.refuse(node, f"a {nd}-D pooling of a rank-{len(s) - self.whole} tensor")
        if not self.whole and nd == 2 and len(set(kernel)) == len(set(strides)) == len(set(begin + end)) == 1 \
                and dil == [1, 1] and not ceil and not count_pad and begin[0] <= kernel[0] // 2:
            args = [str(kernel[0]), f"stride={strides[0]}" if strides[0] != kernel[0] else "",
                    f"pad={begin[0]}" if begin[0] else ""]
            return self.emit(node, f"{kind}pool", [x], args)
        self.emit(node, self.define(ops.pool(kind, len(s), nd, ceil, count_pad)), [x],
                  self.window_args(kernel, strides, dil, begin, end))

    def op_MaxPool(self, node, a):
        self.pool(node, a, "max")

    def op_AveragePool(self, node, a):
        self.pool(node, a, "avg")

    def global_pool(self, node, kind: str):
        x = self.act(node, 0)
        s = self.dshape(node, x)
        nd = len(s) - 2 - self.whole
        if nd not in ops.AXES:
            self.refuse(node, f"a global pooling of a rank-{nd + 2} tensor")
        fn = "global_avgpool" if kind == "avg" and len(s) == 4 else self.define(ops.global_pool(kind, len(s), nd))
        self.emit(node, fn, [x])

    def op_GlobalAveragePool(self, node, a):
        self.global_pool(node, "avg")

    def op_GlobalMaxPool(self, node, a):
        self.global_pool(node, "max")

    def op_Relu(self, node, a):
        self.emit(node, "relu", [self.act(node, 0)])

    def op_Sigmoid(self, node, a):
        self.emit(node, "sigmoid", [self.act(node, 0)])

    def op_Tanh(self, node, a):
        self.emit(node, "tanh", [self.act(node, 0)])

    def op_LeakyRelu(self, node, a):
        alpha = a.get("alpha", 0.01)
        self.emit(node, "leaky_relu", [self.act(node, 0)], ["" if _same(alpha, 0.01) else f"slope={_num(alpha)}"])

    def unary(self, node, a):
        """Elu, Selu, HardSigmoid, ...: an op of one element, attributes as ONNX names them."""
        name, attrs, _ = ops.UNARY[node.op_type]
        defaults = dict(kv.split("=") for kv in attrs.split(", ") if kv)
        args = [f"{k}={_num(a[k])}" for k in defaults if k in a and not _same(a[k], float(defaults[k]))]
        self.emit(node, self.define(ops.unary(node.op_type)), [self.act(node, 0)], args)

    op_Elu = op_Selu = op_HardSigmoid = op_HardSwish = op_Softplus = unary
    op_Neg = op_Exp = op_Log = op_Sqrt = op_Abs = unary

    def op_PRelu(self, node, a):
        slope = self.const(node, node.input[1], "the slope")
        self.act(node, 0)
        if slope.size == 1:
            return self.emit(node, "leaky_relu", [node.input[0]], [f"slope={_num(slope.reshape(()))}"])
        self.broadcast(node, "prelu", [("act", node.input[0], None), ("const", None, slope)])

    def op_Transpose(self, node, a):
        x = self.act(node, 0)
        r = len(self.oshape(node, x))
        perm = list(a.get("perm", range(r - 1, -1, -1)))
        if perm[0] != 0:
            self.batch_only(node, f"a transpose {perm} that moves the first dimension")
        perm = [0] + [p + 1 for p in perm] if self.whole else perm
        if perm == sorted(perm):
            return self.same(node)
        self.emit(node, self.define(ops.transpose(tuple(perm))), [x])

    def squeeze(self, node, a):
        """Squeeze and Unsqueeze: reshapes that drop or add dimensions of size 1."""
        x = self.act(node, 0)
        s = list(self.oshape(node, x))
        axes = a.get("axes") if self.opset < 13 else (
            [int(v) for v in self.const(node, node.input[1], "the axes").reshape(-1)] if self.opt(node, 1) else None)
        rank = len(s) + (len(axes) if node.op_type == "Unsqueeze" else 0)
        axes = sorted(k % rank for k in axes) if axes is not None else [k for k, d in enumerate(s) if d == 1]
        if 0 in axes:
            self.batch_only(node, f"a {node.op_type.lower()} of the first dimension")
        if node.op_type == "Squeeze":
            dst = [d for k, d in enumerate(s) if k not in axes]
        else:
            rest = iter(s)
            dst = [1 if k in axes else next(rest) for k in range(rank)]
        self.reshape_to(node, x, tuple(dst if self.whole else dst[1:]))

    op_Squeeze = op_Unsqueeze = squeeze

    def op_Clip(self, node, a):
        x = self.act(node, 0)
        if self.opset < 11:
            lo, hi = a.get("min"), a.get("max")
        else:
            lo, hi = [float(self.const(node, t, "a bound").reshape(())) if t else None
                      for t in (self.opt(node, 1), self.opt(node, 2))]
        if lo is not None and hi is not None:
            if _same(lo, 0) and _same(hi, 6):
                return self.emit(node, "relu6", [x])
            return self.emit(node, "clip", [x], [f"lo={_num(lo)}", f"hi={_num(hi)}"])
        if lo is not None:
            if _same(lo, 0):
                return self.emit(node, "relu", [x])
            return self.emit(node, self.define(ops.clip_one_side("lo")), [x], [f"lo={_num(lo)}"])
        if hi is not None:
            return self.emit(node, self.define(ops.clip_one_side("hi")), [x], [f"hi={_num(hi)}"])
        self.same(node)

    def softmax(self, node, a, log: bool):
        x = self.act(node, 0)
        s = self.oshape(node, x)
        axis = a.get("axis", -1 if self.opset >= 13 else 1) % max(len(s), 1)
        axes = (axis,) if self.opset >= 13 else tuple(range(axis, len(s)))
        if 0 in axes:
            self.batch_only(node, f"a {'log' if log else ''}softmax over the first dimension")
        axes = tuple(k + self.whole for k in axes)
        rank = len(s) + self.whole
        fn = "softmax" if (rank, axes, log) == (2, (1,), False) else self.define(ops.softmax(rank, axes, log))
        self.emit(node, fn, [x])

    def op_Softmax(self, node, a):
        self.softmax(node, a, False)

    def op_LogSoftmax(self, node, a):
        self.softmax(node, a, True)

    def reshape_to(self, node, x, dst: tuple) -> None:
        """Each example of x reshaped to dst (row-major)."""
        src = self.dshape(node, x)[1:]
        shape = tuple(dst) if self.whole else (self.oshape(node, x)[0], *dst)
        if self.shapes.get(node.output[0]) != shape:
            self.shapes[node.output[0]] = self.found[node.output[0]] = shape
        if tuple(src) == tuple(dst):
            return self.same(node, x)
        if len(src) == 3 and len(dst) == 1:
            return self.emit(node, "flatten", [x])
        self.emit(node, self.define(ops.reshape(tuple(src), tuple(dst))), [x])

    def op_Flatten(self, node, a):
        x = self.act(node, 0)
        s = self.oshape(node, x)
        axis = a.get("axis", 1) + (len(s) if a.get("axis", 1) < 0 else 0)
        if axis != 1:
            self.batch_only(node, f"a flatten at axis {axis}")
            return self.reshape_to(node, x, (int(np.prod(s[:axis])), int(np.prod(s[axis:]))))
        self.reshape_to(node, x, (int(np.prod(s[1:])),) if not self.whole else (s[0], int(np.prod(s[1:]))))

    def op_Reshape(self, node, a):
        x = self.act(node, 0)
        s = list(self.oshape(node, x))
        if node.input[1] not in self.consts:
            self.refuse(node, "the shape must be a constant (or computed from constants and shapes)")
        t0, t1 = (list(v.reshape(-1)) for v in self.consts[node.input[1]])
        batch = [k for k, (u, v) in enumerate(zip(t0, t1)) if u != v]
        if any(k != 0 or (t0[k], t1[k]) != (101, 103) for k in batch) or len(t0) != len(t1):
            self.refuse(node, "the new shape depends on the batch size other than as its first dimension")
        allowzero = a.get("allowzero", 0)
        target = [s[k] if v == 0 and not allowzero and k < len(s) else int(v) for k, v in enumerate(t0)]
        if any(v is not None and v < -1 or v == 0 for v in target) or target.count(-1) > 1:
            self.refuse(node, f"the shape {[int(v) for v in t0]} (zero or negative sizes)")
        if self.whole:
            total, known = int(np.prod(s)), int(np.prod([v for v in target if v != -1]))
            return self.reshape_to(node, x, tuple(v if v != -1 else total // known for v in target))
        rest, per = target[1:], int(np.prod(s[1:]))
        known = int(np.prod([v for v in rest if v != -1]))
        keeps_batch = (batch or target[0] is None or (s[0] is not None and target[0] == s[0])
                       or (target[0] == -1 and -1 not in rest and known == per))
        if not keeps_batch or per % known:
            self.batch_only(node, f"a reshape to {[int(v) for v in t0]} that changes the first dimension")
        self.reshape_to(node, x, tuple(v if v != -1 else per // known for v in rest))

    def arith(self, node, op: str):
        A, B = node.input[:2]
        if A in self.consts or B in self.consts:
            rev = A in self.consts  # c op x
            x, c = (B, self.const(node, A, "a constant")) if rev else (A, self.const(node, B, "a constant"))
            self.act(node, 1 if rev else 0)
            if c.size == 1 and c.ndim <= len(self.oshape(node, x)):
                fn = self.define(ops.scalar(op, rev and op in ("sub", "div")))
                return self.emit(node, fn, [x], [f"c={_num(c.reshape(()))}"])
            pair = [("act", x, None), ("const", None, c)]
            return self.broadcast(node, op, pair[::-1] if rev else pair)
        self.act(node, 0), self.act(node, 1)
        if self.dshape(node, A) == self.dshape(node, B):
            return self.emit(node, "add" if op == "add" else self.define(ops.elementwise(op)), [A, B])
        self.broadcast(node, op, [("act", A, None), ("act", B, None)])

    def broadcast(self, node, op: str, operands) -> None:
        """a op b with ONNX's broadcasting, for tensors of different shapes or a tensor of constants."""
        ranks = [len(self.oshape(node, t)) if kind == "act" else c.ndim for kind, t, c in operands]
        top = max(ranks)
        for (kind, t, c), r in zip(operands, ranks):
            if kind == "act" and r != top:
                self.batch_only(node, f"'{t}' broadcasts along the first dimension")
            if kind == "const" and r == top and c.shape[0] != 1:
                self.batch_only(node, "a constant that varies along the first dimension")
        R = top + self.whole
        aligned = []
        for (kind, t, c), r in zip(operands, ranks):
            if kind == "act":
                s = self.dshape(node, t)
                aligned.append((s[0],) + (1,) * (R - len(s)) + tuple(s[1:]))
            else:
                aligned.append((1,) * (R - c.ndim) + tuple(c.shape))
        out = [next((d for d in col if d != 1), 1) for col in zip(*aligned)]
        var = ["n"] + [f"i{p}" for p in range(1, R)]
        entries, names, params = [], [], []
        for k, ((kind, t, c), al) in enumerate(zip(operands, aligned)):
            name = ("a", "b")[k] if all(o[0] == "act" for o in operands) else ("x" if kind == "act" else "value")
            if kind == "act":
                own = [0] + list(range(R - len(self.dshape(node, t)) + 1, R))
            else:
                own = list(range(max(1, R - c.ndim), R))
                params.append(np.asarray(c, np.float32).reshape([al[p] for p in own]))
            idx = [(None if al[p] == 1 and out[p] != 1 else var[p], al[p]) for p in own]
            entries.append(("in" if kind == "act" else "param", name, idx))
            names.append(name)
        a, b = (f"{{{n}}}" for n in names)
        expr = f"select({a} > 0.0, {a}, {b} * {a})" if op == "prelu" else \
            f"{a} {dict(add='+', sub='-', mul='*', div='/')[op]} {b}"
        spec = ops.indexed(f"{op}_{'broadcast' if not params else 'const'}", entries, list(zip(var, out)), expr)
        self.emit(node, self.define(spec), [t for kind, t, _ in operands if kind == "act"], (), params)

    def op_Add(self, node, a):
        self.arith(node, "add")

    def op_Sub(self, node, a):
        self.arith(node, "sub")

    def op_Mul(self, node, a):
        self.arith(node, "mul")

    def op_Div(self, node, a):
        self.arith(node, "div")

    def op_Gemm(self, node, a):
        C = self.opt(node, 2)
        self.matmul(node, node.input[0], node.input[1], a.get("transA", 0), a.get("transB", 0),
                    a.get("alpha", 1.0), self.const(node, C, "the bias C") if C else None, a.get("beta", 1.0))

    def op_MatMul(self, node, a):
        self.matmul(node, node.input[0], node.input[1])

    def matmul(self, node, A, B, ta=0, tb=0, alpha=1.0, C=None, beta=1.0) -> None:
        """A @ B (alpha A' B' + beta C for Gemm) with numpy's broadcasting of the leading dimensions."""
        cA, cB = A in self.consts, B in self.consts
        if cA and cB:
            self.refuse(node, "both factors are constants")
        a = self.const(node, A, "A") if cA else None
        b = self.const(node, B, "B") if cB else None
        if not cA:
            self.act(node, 0)
        if not cB:
            self.act(node, 1)
        sa = a.shape if cA else self.oshape(node, A)
        sb = b.shape if cB else self.oshape(node, B)
        if not sa or not sb:
            self.refuse(node, "a factor of rank 0")
        a1, b1 = len(sa) == 1, len(sb) == 1
        ea, eb = ((1,) + tuple(sa) if a1 else tuple(sa)), (tuple(sb) + (1,) if b1 else tuple(sb))
        M, K = (ea[-1], ea[-2]) if ta else (ea[-2], ea[-1])
        U = eb[-2] if tb else eb[-1]
        try:
            lead = tuple(np.broadcast_shapes(ea[:-2], eb[:-2]))
        except ValueError:
            self.refuse(node, f"factors of shapes {list(sa)} and {list(sb)} that do not broadcast")
        out = lead + (() if a1 else (M,)) + (() if b1 else (U,))
        if C is not None and C.ndim == 2 and C.shape[0] != 1:
            self.batch_only(node, "a bias C that varies by row")
        if not cA and (len(sa) != len(out) or a1 or (ta and not lead)):
            self.batch_only(node, "A's first dimension is not the output's")
        if not cB and (len(sb) != len(out) or not lead):
            self.batch_only(node, "B's first dimension is not the output's")
        for c, shape in ((a, ea), (b, eb)):
            if c is not None and len(shape) - 2 == len(lead) and lead and shape[0] != 1:
                self.batch_only(node, "a constant factor that varies along the first dimension")
        if not out:
            self.batch_only(node, "a product of vectors")
        if not self.whole and cB and not cA and len(sa) == 2 and not ta and len(sb) == 2 and _same(alpha, 1):
            w = b if tb else b.T
            params = (w,)
            if C is not None:
                params = (w, np.broadcast_to(np.asarray(C, np.float32).reshape(-1) * np.float32(beta), (U,)))
            return self.emit(node, "dense", [A], [str(U), "" if C is not None else "bias=false"], params)
        var = {}  # ONNX output position -> index name
        for p in range(len(out)):
            var[p] = "n" if p == 0 and not self.whole else f"b{p}"
        if not a1:
            var[len(lead)] = "n" if not lead and not self.whole else "m"
        if not b1:
            var[len(out) - 1] = "u"
        outv = ([("n", 1)] if self.whole else []) + [(var[p], out[p]) for p in range(len(out))]

        def reads(shape, promoted, mat):  # the operand's own dimensions
            entries = []
            for j, d in enumerate(shape[:-2]):
                p = len(lead) - (len(shape) - 2) + j
                entries.append((None if d == 1 and lead[p] != 1 else var[p], d))
            return entries + [x for x in mat if x is not None][-(1 if promoted else 2):]

        m_var = (var[len(lead)], M) if not a1 else None
        u_var = (var[len(out) - 1], U) if not b1 else None
        ra = reads(ea, a1, [("k", K), m_var] if ta else [m_var, ("k", K)])
        rb = reads(eb, b1, [u_var, ("k", K)] if tb else [("k", K), u_var])
        if a1:
            ra = [("k", K)]
        if b1:
            rb = [("k", K)]
        entries, params, ins = [], [], []
        for c, t, r, name in ((a, A, ra, "a"), (b, B, rb, "b")):
            if c is None:
                entries.append(("in", name, ([("n", 1)] if self.whole else []) + r))
                ins.append(t)
            else:
                entries.append(("param", "weight" if name == "b" else "a_value", r))
                params.append(c)
        expr = ("" if _same(alpha, 1) else f"{_num(alpha)} * ") + "sum(k) {%s} * {%s}" % (entries[0][1], entries[1][1])
        if C is not None:
            cal = (1,) * (2 - C.ndim) + C.shape
            entries.append(("param", "bias", [(None if d == 1 and o != 1 else v, d) for (v, o), d in
                                              zip(outv[-2:], cal)][2 - C.ndim:]))
            params.append(np.asarray(C, np.float32) * np.float32(beta))
            expr += " + {bias}"
        spec = ops.indexed("gemm" if node.op_type == "Gemm" else "matmul", entries, outv, expr)
        self.emit(node, self.define(spec), ins, (), params)

    def op_Concat(self, node, a):
        ins = [self.act(node, k) for k in range(len(node.input))]
        if len(ins) == 1:
            return self.same(node)
        s = self.oshape(node, ins[0])
        axis = a["axis"] % len(s)
        if axis == 0:
            self.batch_only(node, "a concatenation along the first dimension")
        axis += self.whole
        fn = "concat" if axis == 1 else self.define(ops.concat(len(s) + self.whole, axis))
        t = ins[0]
        for k, u in enumerate(ins[1:]):
            out = node.output[0] if k == len(ins) - 2 else f"{node.output[0]}#{k}"
            self.emit(node, fn, [t, u], out=out)
            t = out

    def op_BatchNormalization(self, node, a):
        x = self.act(node, 0)
        if a.get("training_mode", 0) or any(node.output[1:]):
            self.refuse(node, "training mode (batch statistics and running statistics as outputs)")
        scale, bias, mean, var = (self.const(node, t, "a statistic") for t in node.input[1:5])
        s = self.dshape(node, x)
        eps = a.get("epsilon", 1e-5)
        fn = "batchnorm" if len(s) == 4 and not self.whole else self.define(ops.batchnorm(len(s)))
        self.emit(node, fn, [x], ["" if _same(eps, 1e-5) else f"eps={_num(eps)}"], (scale, bias, mean, var))

    def op_LayerNormalization(self, node, a):
        x = self.act(node, 0)
        s = self.dshape(node, x)
        axis = a.get("axis", -1) % (len(s) - self.whole)
        if axis == 0:
            self.batch_only(node, "a normalization over the first dimension")
        axis += self.whole
        scale = self.const(node, node.input[1], "the scale")
        bias = self.const(node, node.input[2], "the bias") if self.opt(node, 2) else np.zeros(1, np.float32)
        shape = tuple(s[axis:])
        eps = a.get("epsilon", 1e-5)
        eps = "" if _same(eps, 1e-5) else f"eps={_num(eps)}"
        for k, part in enumerate(("y", "mean", "invstd")):
            if len(node.output) <= k or not node.output[k]:
                continue
            if part == "y" and len(s) == 2 and not self.whole:
                fn = "layernorm"
            else:
                fn = self.define(ops.layernorm(len(s), axis, part, shape))
            params = (np.broadcast_to(scale, shape), np.broadcast_to(bias, shape)) if part == "y" else ()
            self.emit(node, fn, [x], [eps], params, out=node.output[k])

    def op_Dropout(self, node, a):
        if len(node.output) > 1 and node.output[1]:
            self.refuse(node, "the mask output")
        if self.opset >= 12 and self.opt(node, 2):
            training = bool(self.const(node, node.input[2], "training_mode").reshape(()))
            ratio = float(self.const(node, node.input[1], "the ratio").reshape(())) if self.opt(node, 1) else 0.5
            if training and ratio != 0:
                self.refuse(node, "training mode, whose output is random")
        self.act(node, 0)
        self.same(node)

    def op_Identity(self, node, a):
        self.act(node, 0)
        self.same(node)

    # ------------------------------------------------------------------ the .net file

    def render(self, inputs, outs) -> tuple[str, list[tuple]]:
        from .graph import prelude

        reserved = KEYWORDS | {o.name for o in prelude().ops} | set(self.ops.values())
        taken: set[str] = set()

        def ident(raw: str, fallback: str = "t") -> str:
            base = re.sub(r"_+", "_", re.sub(r"\W", "_", raw)).strip("_") or fallback
            if base[0].isdigit():
                base = f"{fallback}_{base}"
            if base in reserved:
                base += "_"
            out, k = base, 1
            while out in taken:
                k += 1
                out = f"{base}_{k}"
            taken.add(out)
            return out

        names = {i.name: ident(i.name, "input") for i in inputs}
        head = [f"    input {names[i.name]}: [{', '.join(map(str, self.shapes[i.name][0 if self.whole else 1:]))}]"
                for i in inputs]
        readers = Counter(self.resolve(t) for c in self.calls for t in c.ins) + Counter(outs)
        lines, layer_params, chain = [], [], []

        def close():
            if chain:
                last, first = chain[-1].out, chain[0].node
                raw = self.prefer.get(last) or (last if _readable(last) or first is None else _node_name(first) or last)
                binding = ident(raw, chain[0].fn)
                names[last] = binding
                lines.append(f"    {binding} = " + " |> ".join(call_text(c, k > 0) for k, c in enumerate(chain)))
                chain.clear()

        def call_text(c, piped):
            args = ([] if piped else [names[self.resolve(c.ins[0])]]) + [names[self.resolve(t)] for t in c.ins[1:]]
            args += c.args
            return f"{c.fn}({', '.join(args)})" if args else c.fn

        for c in self.calls:
            src = self.resolve(c.ins[0]) if c.ins else None
            # a pipeline goes on through one-input layers without weights that read only its result
            if not (chain and src == chain[-1].out and readers[src] == 1 and not c.params and len(c.ins) == 1):
                close()
            chain.append(c)
            layer_params.append(c.params)
        close()
        source = getattr(self.path, "name", str(self.path).rsplit("/", 1)[-1])
        text = f"# imported from {source} by dnnc import\n"
        if self.whole:
            text += (f"# imported whole, each input one example of its full ONNX shape, since {self.why}\n")
        text += "".join(t + "\n" for t in self.ops)
        text += (f"network {ident(self.g.name or 'imported', 'net')} {{\n" + "\n".join(head + lines)
                 + f"\n    output {', '.join(names[o] for o in outs)}\n}}\n")
        return text, layer_params
