"""The ONNX nodes `dnnc import` reads, one method a node type (op_Conv, ...): each emits a call
of a built-in layer where one fits, else defines an op for what the node needs (onnx_ops), or
passes its input on (Identity, Dropout). A node that mixes examples along the first dimension
calls batch_only, and the graph is then imported whole (see onnx_import)."""
from __future__ import annotations

import numpy as np

from . import onnx_ops as ops

BATCH = 2**31 - 1  # the batch dimension's size in index arithmetic, where no number is known
PROBES = (101, 103)  # two batch sizes: a constant computed from a Shape differs between them where it is the batch


def _num(v) -> str:
    """A float32 number as the shortest decimal that reads back as it."""
    v = np.float32(v)
    if not np.isfinite(v):
        raise ValueError(v)
    return np.format_float_positional(v, unique=True, trim="0")


def _same(a, b) -> bool:
    return np.float32(a) == np.float32(b)


class Nodes:
    """Mixed into onnx_import._Importer, whose helpers (act, const, emit, ...) these use."""

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
        """The generated op's arguments, those at their defaults left out."""
        ax = ops.AXES[len(kernel)]
        out = [f"kernel_{x}={k}" for x, k in zip(ax, kernel)]
        for fmt, vals, default in (("stride_{}", strides, 1), ("dilation_{}", dil, 1), ("pad_{}", begin, 0),
                                   ("pad_{}_end", end, 0)):
            out += [f"{fmt.format(x)}={v}" for x, v in zip(ax, vals) if v != default]
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
        builtin = kind == "avg" and nd == 2 and not self.whole
        fn = "global_avgpool" if builtin else self.define(ops.global_pool(kind, len(s), nd))
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
        if axes is None and node.op_type == "Unsqueeze":
            self.refuse(node, "no axes")
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
        if any(k != 0 or (t0[k], t1[k]) != PROBES for k in batch) or len(t0) != len(t1):
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
        """A @ B (Gemm: alpha A' B' + beta C) with numpy's broadcasting of the leading dimensions."""
        a = self.const(node, A, "A") if A in self.consts else None
        b = self.const(node, B, "B") if B in self.consts else None
        if a is not None and b is not None:
            self.refuse(node, "both factors are constants")
        shapes = []
        for k, (t, c) in enumerate(((A, a), (B, b))):
            if c is None:
                s = self.oshape(node, self.act(node, k))
                shapes.append((s[0] or BATCH, *s[1:]))
            else:
                shapes.append(c.shape)
        sa, sb = shapes
        if not sa or not sb:
            self.refuse(node, "a factor of rank 0")
        a1, b1 = len(sa) == 1, len(sb) == 1  # a vector is a matrix of one row (A) or column (B)
        ea, eb = ((1, *sa) if a1 else sa), ((*sb, 1) if b1 else sb)
        M, K = (ea[-1], ea[-2]) if ta else (ea[-2], ea[-1])
        U = eb[-2] if tb else eb[-1]
        try:
            lead = tuple(np.broadcast_shapes(ea[:-2], eb[:-2]))
        except ValueError:
            self.refuse(node, f"factors of shapes {list(sa)} and {list(sb)} that do not broadcast")
        out = lead + (() if a1 else (M,)) + (() if b1 else (U,))
        # in batch mode, the output's first dimension must be each tensor factor's and no constant's
        if not out:
            self.batch_only(node, "a product of vectors")
        if a is None and (len(sa) != len(out) or (ta and not lead)):
            self.batch_only(node, "A's first dimension is not the output's")
        if b is None and (len(sb) != len(out) or not lead):
            self.batch_only(node, "B's first dimension is not the output's")
        for c, shape in ((a, ea), (b, eb)):
            if c is not None and lead and len(shape) - 2 == len(lead) and shape[0] != 1:
                self.batch_only(node, "a constant factor that varies along the first dimension")
        if C is not None and C.ndim == 2 and C.shape[0] != 1:
            self.batch_only(node, "a bias C that varies by row")
        if not self.whole and a is None and b is not None and len(sa) == len(sb) == 2 and not ta and _same(alpha, 1):
            w = b if tb else b.T  # dense's weight is [units, inputs]
            if C is None:
                return self.emit(node, "dense", [A], [str(U), "bias=false"], (w,))
            bias = np.broadcast_to(np.asarray(C, np.float32).reshape(-1) * np.float32(beta), (U,))
            return self.emit(node, "dense", [A], [str(U)], (w, bias))
        var = {p: "n" if p == 0 and not self.whole else f"b{p}" for p in range(len(lead))}
        if not a1:
            var[len(lead)] = "n" if not lead and not self.whole else "m"
        if not b1:
            var[len(out) - 1] = "u"
        outv = ([("n", 1)] if self.whole else []) + [(var[p], d) for p, d in enumerate(out)]

        def reads(shape, promoted, mat):
            """A factor's leading dimensions aligned to the output's, then its matrix dimensions."""
            if promoted:
                return [("k", K)]
            own = shape[:-2]
            return [(None if d == 1 and lead[p] != 1 else var[p], d)
                    for p, d in zip(range(len(lead) - len(own), len(lead)), own)] + mat

        m, u = (var.get(len(lead)), M), (var.get(len(out) - 1), U)
        ra = reads(ea, a1, [("k", K), m] if ta else [m, ("k", K)])
        rb = reads(eb, b1, [u, ("k", K)] if tb else [("k", K), u])
        entries, params, ins = [], [], []
        for c, t, r, name in ((a, A, ra, "a"), (b, B, rb, "b")):
            if c is None:
                entries.append(("in", name, ([("n", 1)] if self.whole else []) + r))
                ins.append(t)
            else:
                entries.append(("param", "weight" if name == "b" else "a_value", r))
                params.append(c)
        expr = ("" if _same(alpha, 1) else f"{_num(alpha)} * ") + "sum(k) {%s} * {%s}" % (entries[0][1], entries[1][1])
        if C is not None:  # broadcast over the [M, U] output
            aligned = (1,) * (2 - C.ndim) + C.shape
            bias = [(None if d == 1 and o != 1 else v, d) for (v, o), d in zip(outv[-2:], aligned)]
            entries.append(("param", "bias", bias[2 - C.ndim:]))
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
        fn = "batchnorm" if len(s) == 4 and not self.whole else self.define(ops.batchnorm(1 + self.whole))
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
