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
from .onnx_nodes import PROBES, Nodes
from ..base.errors import DnncError
from ..base.host import available_memory
from ..base.fileio import no_such_file
from ..front.graph import prelude

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
            raise DnncError(f"input '{_clean(i.name)}' has shape {dims}, too large for one example", path=str(p))
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
            raise DnncError(f"{_clean(e.where)}: {_clean(e.why)}, but dnnc's first dimension is the batch; a graph "
                            f"that mixes examples is imported whole only with fixed input shapes, and input "
                            f"'{_clean(free[0])}' has a "
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


def _clean(text: str) -> str:
    """A name from the file as one printable line: it goes into messages and the .net file's comments."""
    return "".join(c if c.isprintable() else "?" for c in text)


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


class _Importer(Nodes):
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
        return f"node '{_clean(node.name or node.output[0])}' ({_clean(node.op_type)})"

    def refuse(self, node, what: str):
        raise DnncError(f"{self.where(node)}: {_clean(what)}", path=str(self.path))

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
                raise DnncError(f"input '{_clean(i.name)}' is not a tensor", path=str(self.path))
            if t.elem_type != onnx.TensorProto.FLOAT:
                kind = onnx.TensorProto.DataType.Name(t.elem_type).lower()
                raise DnncError(f"input '{_clean(i.name)}' holds {kind}; "
                                f"dnnc computes in float32", path=str(self.path))
            if not self.whole and len(dims) < 2:
                raise _Whole(f"input '{_clean(i.name)}'", f"it has rank {len(dims)}, no dimension besides the batch")
            if not dims or any(d <= 0 for d in dims[0 if self.whole else 1:]):
                raise DnncError(f"input '{_clean(i.name)}' needs a fixed shape after the batch dimension",
                                path=str(self.path))
            self.shapes[i.name] = tuple(d or None for d in dims)
            self.acts.add(i.name)
        for node in self.g.node:
            self.node(node)
        outs, self.prefer = [], {}
        for o in self.g.output:
            t = self.resolve(o.name)
            if self.types.get(o.name, onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT:
                raise DnncError(f"output '{_clean(o.name)}' is not float32", path=str(self.path))
            if t not in self.acts:
                raise DnncError(f"output '{_clean(o.name)}' is a constant, which no layer computes",
                                path=str(self.path))
            if t in {i.name for i in inputs} or t in outs:  # a copy, so each output is a layer of its own
                self.calls.append(_Call(self.define(ops.IDENTITY), [t], [], (), o.name, None))
                t = o.name
            self.prefer.setdefault(t, o.name)  # the binding takes the output's name
            outs.append(t)
        return self.render(inputs, outs)

    def node(self, node) -> None:
        a = {at.name: self.helper.get_attribute_value(at) for at in node.attribute}
        a = {k: v.decode() if isinstance(v, bytes) else v for k, v in a.items()}
        if node.op_type == "Shape" and node.input[0] not in self.consts:  # known, but for the batch size
            s = self.oshape(node, node.input[0])
            lo, hi = a.get("start", 0), a.get("end", len(s))
            self.consts[node.output[0]] = tuple(np.array(s if self.whole else (b, *s[1:]), np.int64)[lo:hi]
                                                for b in PROBES)
            return
        if all(not t or t in self.consts for t in node.input):
            if node.op_type.startswith("Random") or node.op_type in ("Bernoulli", "Multinomial"):
                self.refuse(node, "random numbers")
            self.fold(node)
            return
        handler = getattr(self, f"op_{node.op_type}", None)
        if handler is None:
            raise DnncError(f"node '{_clean(node.name or node.output[0])}': ONNX op {_clean(node.op_type)} has no "
                            f"dnnc layer (supported: {SUPPORTED})", path=str(self.path))
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
            vis = [helper.make_tensor_value_info(t, np_dtype_to_tensor_dtype(v.dtype), v.shape)
                   for t, v in feeds.items()]
            outs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
            g = helper.make_graph([node], "fold", vis, outs)
            try:
                m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
                results.append([np.asarray(r) for r in ReferenceEvaluator(m).run(None, feeds)])
            except Exception as e:
                self.refuse(node, f"cannot compute this constant ({str(e).splitlines()[0][:100] if str(e) else e!r})")
        for o, r0, r1 in zip([o for o in node.output if o], *results):
            self.consts[o] = (r0.astype(np.float32) if r0.dtype.kind == "f" else r0,
                              r1.astype(np.float32) if r1.dtype.kind == "f" else r1)

    # ------------------------------------------------------------------ the .net file

    def render(self, inputs, outs) -> tuple[str, list[tuple]]:
        reserved = KEYWORDS | {o.name for o in prelude().ops} | set(self.ops.values())
        taken: set[str] = set()

        def ident(raw: str, fallback: str = "t") -> str:
            base = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", raw)).strip("_") or fallback
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
            # a pipeline goes on through one-input layers without weights that read only its result,
            # and through the steps of one node (a Concat of many inputs, two at a time)
            steps = chain and c.node is not None and c.node is chain[-1].node
            if not (chain and src == chain[-1].out and readers[src] == 1 and not c.params
                    and (len(c.ins) == 1 or steps)):
                close()
            chain.append(c)
            layer_params.append(c.params)
        close()
        source = _clean(getattr(self.path, "name", str(self.path).rsplit("/", 1)[-1]))
        text = f"# imported from {source} by dnnc import\n"
        if self.whole:
            text += f"# imported whole, each input one example of its full ONNX shape, since {_clean(self.why)}\n"
        text += "".join(t + "\n" for t in self.ops)
        network = re.sub(r"[^A-Za-z0-9_]", "_", self.g.name or "imported").lstrip("0123456789_") or "imported"
        text += (f"network {network} {{\n" + "\n".join(head + lines)
                 + f"\n    output {', '.join(names[o] for o in outs)}\n}}\n")
        return text, layer_params
