"""Ops in index notation that `dnnc import` writes into an imported file for ONNX nodes that
no built-in layer expresses: a kernel, stride, dilation and padding per dimension, ceil_mode,
count_include_pad, softmax on another axis, reshapes, broadcasting, matrix products of any
rank. Each function returns (a readable op name, the op's text); the importer defines an op
once per distinct text.

The dimensions before the channels (`n`, and `n0` ahead of it when a graph is imported whole,
see onnx_import) pass through unchanged.
"""
from __future__ import annotations

AXES = {1: ("w",), 2: ("h", "w"), 3: ("d", "h", "w")}


def _lead(rank: int, nd: int) -> list[str]:
    """Names of the dimensions before the channel, for a tensor of rank `rank` with nd spatial ones."""
    return [f"n{k}" for k in range(rank - nd - 2)] + ["n"]


def _out_size(a: str, ceil: bool) -> str:
    span = f"dilation_{a} * (kernel_{a} - 1) + 1"
    if not ceil:
        return f"({a} + pad_{a} + pad_{a}_end - ({span})) / stride_{a} + 1"
    # ceil_mode rounds up, but a last window that would start in the end padding is dropped
    return (f"min(({a} + pad_{a} + pad_{a}_end - ({span}) + stride_{a} - 1) / stride_{a} + 1, "
            f"({a} + pad_{a} - 1) / stride_{a} + 1)")


def _window_attrs(ax) -> str:
    return ", ".join([f"kernel_{a}" for a in ax] + [f"stride_{a}=1" for a in ax] + [f"dilation_{a}=1" for a in ax]
                     + [f"pad_{a}=0" for a in ax] + [f"pad_{a}_end=0" for a in ax])


def _at(a: str, r: str) -> str:
    return f"i_{a} * stride_{a} + {r}_{a} * dilation_{a} - pad_{a}"


def pool(kind: str, rank: int, nd: int, ceil: bool, count_pad: bool) -> tuple[str, str]:
    """ONNX MaxPool / AveragePool with every attribute."""
    ax, lead = AXES[nd], _lead(rank, nd)
    x = f"x[{', '.join(lead)}, c, {', '.join(_at(a, 'r') for a in ax)}]"
    window = ", ".join(f"r_{a} < kernel_{a}" for a in ax)
    if kind == "max":
        value = f"max({window}) {x}"
    elif not count_pad:  # mean counts only the reads inside x
        value = f"mean({window}) {x}"
    else:  # count_include_pad: the divisor counts padding, though not positions past it (ceil_mode)
        counts = " * ".join(f"(sum(q_{a} < kernel_{a}) select(i_{a} * stride_{a} + q_{a} * dilation_{a} < "
                            f"{a} + pad_{a} + pad_{a}_end, 1.0, 0.0))" for a in ax)
        value = f"(sum({window}) {x}) / ({counts})"
    name = f"{kind}pool{nd}d" + ("_ceil" if ceil else "") + ("_count_pad" if count_pad else "")
    dims = ", ".join(lead + ["c"] + [_out_size(a, ceil) for a in ax])
    text = (f"# ONNX {'MaxPool' if kind == 'max' else 'AveragePool'}: kernel, stride, dilation and padding "
            f"(start and end) per dimension{', ceil_mode' if ceil else ''}"
            f"{', padding counted in the average' if count_pad else ''}\n"
            f"op {name}(x[{', '.join(lead + ['c', *ax])}]; {_window_attrs(ax)})\n    -> y[{dims}]\n{{\n"
            f"    y[{', '.join(lead + ['c'] + [f'i_{a}' for a in ax])}] = {value}\n}}\n")
    return name, text


def conv(rank: int, nd: int) -> tuple[str, str]:
    """ONNX Conv with every attribute."""
    ax, lead = AXES[nd], _lead(rank, nd)
    fan = " * ".join(["c / groups"] + [f"kernel_{a}" for a in ax])
    x = f"x[{', '.join(lead)}, f / (filters / groups) * (c / groups) + k, {', '.join(_at(a, 'r') for a in ax)}]"
    name = f"conv{nd}d"
    text = (f"# ONNX Conv: kernel, stride, dilation and padding (start and end) per dimension\n"
            f"op {name}(x[{', '.join(lead + ['c', *ax])}]; filters, {_window_attrs(ax)}, groups=1)\n"
            f"    -> y[{', '.join(lead + ['filters'] + [_out_size(a, False) for a in ax])}]\n{{\n"
            f"    require c % groups == 0\n    require filters % groups == 0\n"
            f"    param weight[filters, c / groups, {', '.join(f'kernel_{a}' for a in ax)}] "
            f"~ uniform(1.0 / sqrt({fan}))\n"
            f"    param bias[filters] ~ uniform(1.0 / sqrt({fan}))\n"
            f"    y[{', '.join(lead + ['f'] + [f'i_{a}' for a in ax])}] = bias[f] + sum(k < c / groups, "
            f"{', '.join(f'r_{a} < kernel_{a}' for a in ax)})\n"
            f"        {x} * weight[f, k, {', '.join(f'r_{a}' for a in ax)}]\n}}\n")
    return name, text


def global_pool(kind: str, rank: int, nd: int) -> tuple[str, str]:
    ax, lead = AXES[nd], _lead(rank, nd)
    name = f"global_{kind}pool{nd}d"
    reads = ", ".join(f"i_{a} + r_{a}" for a in ax)
    text = (f"op {name}(x[{', '.join(lead + ['c', *ax])}]) -> y[{', '.join(lead + ['c'] + ['1'] * nd)}]\n{{\n"
            f"    y[{', '.join(lead + ['c'] + [f'i_{a}' for a in ax])}] = {'max' if kind == 'max' else 'mean'}"
            f"({', '.join(f'r_{a} < {a}' for a in ax)}) x[{', '.join(lead)}, c, {reads}]\n}}\n")
    return name, text


def batchnorm(channel: int) -> tuple[str, str]:
    """Inference-mode batch normalization over the channels (dimension `channel`) of a tensor of any rank."""
    lead = _lead(channel + 1, 0)
    name = "batchnorm_inference"
    text = (f"# batch normalization with the running statistics (inference only), channels at dimension {len(lead)}\n"
            f"op {name}(x[{', '.join(lead)}, c, ...]; eps=0.00001) -> y[{', '.join(lead)}, c, ...]\n{{\n"
            f"    param weight[c] = 1\n    param bias[c] = 0\n    state running_mean[c] = 0\n"
            f"    state running_var[c] = 1\n"
            f"    y[{', '.join(lead)}, k, ...] = (x[{', '.join(lead)}, k, ...] - running_mean[k]) "
            f"/ sqrt(running_var[k] + eps) * weight[k] + bias[k]\n}}\n")
    return name, text


def _names(rank: int) -> tuple[list[str], list[str]]:
    """Dimension names and index names of a rank-`rank` tensor: n, d1, d2, ... and n, i1, i2, ..."""
    return ["n"] + [f"d{k}" for k in range(1, rank)], ["n"] + [f"i{k}" for k in range(1, rank)]


def softmax(rank: int, axes: tuple[int, ...], log: bool) -> tuple[str, str]:
    """(Log)softmax over the dimensions `axes` (jointly, as ONNX before opset 13 did)."""
    dims, idx = _names(rank)
    keep = ", ".join(v for k, v in enumerate(idx) if k not in axes)
    red = [f"j{k}" for k in axes]
    xr = f"x[{', '.join(f'j{k}' if k in axes else v for k, v in enumerate(idx))}]"
    x = f"x[{', '.join(idx)}]"
    y = f"{x} - m[{keep}] - log(s[{keep}])" if log else f"exp({x} - m[{keep}]) / s[{keep}]"
    name = ("log_softmax" if log else "softmax") + (
        "" if rank == 2 and axes == (1,) else f"_{'from' if len(axes) > 1 else 'axis'}{axes[0]}")
    text = (f"op {name}(x[{', '.join(dims)}]) -> y[{', '.join(dims)}]\n{{\n"
            f"    m[{keep}] = max({', '.join(red)}) {xr}\n"
            f"    s[{keep}] = sum({', '.join(red)}) exp({xr} - m[{keep}])\n"
            f"    y[{', '.join(idx)}] = {y}\n}}\n")
    return name, text


def layernorm(rank: int, axis: int, out: str, param_dims: tuple[int, ...]) -> tuple[str, str]:
    """ONNX LayerNormalization over the dimensions from `axis` on: its output Y ('y'), Mean
    ('mean') or InvStdDev ('invstd')."""
    dims, idx = _names(rank)
    keep = ", ".join(idx[:axis])
    red = ", ".join(f"j{k}" for k in range(axis, rank))
    xr = f"x[{', '.join(idx[:axis] + [f'j{k}' for k in range(axis, rank)])}]"
    x = f"x[{', '.join(idx)}]"
    stats = (f"    mu[{keep}] = mean({red}) {xr}\n"
             f"    var[{keep}] = mean({red}) ({xr} - mu[{keep}]) * ({xr} - mu[{keep}])\n")
    w = ", ".join(idx[axis:])
    if out == "y":
        shape = ", ".join(map(str, param_dims))
        body = (f"    param weight[{shape}] = 1\n    param bias[{shape}] = 0\n" + stats +
                f"    y[{', '.join(idx)}] = ({x} - mu[{keep}]) / sqrt(var[{keep}] + eps) * weight[{w}] + bias[{w}]\n")
    elif out == "mean":
        body = f"    y[{', '.join(idx)}] = mean({red}) {xr}\n"
    else:
        body = stats + f"    y[{', '.join(idx)}] = 1.0 / sqrt(var[{keep}] + eps)\n"
    ydims = dims if out == "y" else dims[:axis] + ["1"] * (rank - axis)
    name = "layernorm" + ("" if out == "y" else "_" + out) + f"_axis{axis}"
    text = (f"# ONNX LayerNormalization over dimensions {axis} to {rank - 1}\n"
            f"op {name}(x[{', '.join(dims)}]; eps=0.00001) -> y[{', '.join(ydims)}]\n{{\n{body}}}\n")
    return name, text


def reshape(src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[str, str]:
    """Row-major reshape of each example from per-example shape src to dst."""
    _, idx = _names(len(dst) + 1)
    strides = [1] * len(dst)
    for k in range(len(dst) - 2, -1, -1):
        strides[k] = strides[k + 1] * dst[k + 1]
    flat = " + ".join(f"{v} * {s}" if s != 1 else v for v, s in zip(idx[1:], strides)) or "0"
    reads, inner = [], 1
    for k in range(len(src) - 1, -1, -1):
        at = f"({flat}) / {inner}" if inner != 1 else f"({flat})"
        reads.insert(0, at if k == 0 else f"{at} % {src[k]}")
        inner *= src[k]
    name = "reshape_" + "x".join(map(str, dst))
    text = (f"op {name}(x[n, {', '.join(map(str, src))}]) -> y[n, {', '.join(map(str, dst))}]\n{{\n"
            f"    y[{', '.join(idx)}] = x[n, {', '.join(reads)}]\n}}\n")
    return name, text


def concat(rank: int, axis: int) -> tuple[str, str]:
    dims, idx = _names(rank)
    da, db = list(dims), list(dims)
    da[axis], db[axis] = "p", "q"
    ya, yb = list(idx), list(idx)
    yb[axis] = f"{idx[axis]} - p"
    name = f"concat_axis{axis}"
    out = list(dims)
    out[axis] = "p + q"
    text = (f"op {name}(a[{', '.join(da)}], b[{', '.join(db)}]) -> y[{', '.join(out)}]\n{{\n"
            f"    y[{', '.join(idx)}] = select({idx[axis]} < p, a[{', '.join(ya)}], b[{', '.join(yb)}])\n}}\n")
    return name, text


def scalar(op: str, reverse: bool) -> tuple[str, str]:
    """x op c, or c op x when reverse, for a number c."""
    sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[op]
    name = f"{op}_scalar" if not reverse else f"scalar_{op}"
    value = f"c {sym} x[...]" if reverse else f"x[...] {sym} c"
    return name, f"op {name}(x[...]; c=0.0) -> y[...] {{ y[...] = {value} }}\n"


def elementwise(op: str) -> tuple[str, str]:
    sym = {"sub": "-", "mul": "*", "div": "/"}[op]
    return op, f"op {op}(a[...], b[...]) -> y[...] {{ y[...] = a[...] {sym} b[...] }}\n"


def clip_one_side(side: str) -> tuple[str, str]:
    fn, attr = ("max", "lo") if side == "lo" else ("min", "hi")
    name = f"clip_{'below' if side == 'lo' else 'above'}"
    return name, f"op {name}(x[...]; {attr}=0.0) -> y[...] {{ y[...] = {fn}(x[...], {attr}) }}\n"


IDENTITY = ("identity", "op identity(x[...]) -> y[...] { y[...] = x[...] }\n")


def indexed(name: str, operands: list, out: list, expr: str, reduce: str = "") -> tuple[str, str]:
    """An op from index lists, for broadcasting and matrix products. operands: (role, name, [(index,
    size)]) with role 'in' (a tensor input) or 'param' (its size a number); an index None reads a
    broadcast dimension of size 1 at 0. out: [(index, size)]. expr combines the reads, written as
    {name}; reduce is the reduction in front of it (sum(k)). A dimension of an input is named
    after its index, so inputs sharing an index must agree in size."""
    def read(idx):
        return ", ".join("0" if v is None else v for v, _ in idx)

    ins = [f"{n}[{', '.join('1' if v is None else v for v, _ in idx)}]" for role, n, idx in operands if role == "in"]
    carried = {v for role, _, idx in operands if role == "in" for v, s in idx if v is not None}
    params = [f"    param {n}[{', '.join(str(s) for _, s in idx)}] = 0\n" for role, n, idx in operands
              if role == "param"]
    ydims = ", ".join(v if v in carried else str(s) for v, s in out)
    value = expr.format(**{n: f"{n}[{read(idx)}]" for _, n, idx in operands})
    text = (f"op {name}({', '.join(ins)}) -> y[{ydims}]\n{{\n" + "".join(params) +
            f"    y[{', '.join(v for v, _ in out)}] = {reduce}{value}\n}}\n")
    return name, text


# ONNX activations without a built-in layer: (op name, attributes, the value of y[...])
UNARY = {
    "Elu": ("elu", "alpha=1.0", "select(x[...] > 0.0, x[...], alpha * (exp(x[...]) - 1.0))"),
    "Selu": ("selu", "alpha=1.67326319217681884765625, gamma=1.05070102214813232421875",
             "gamma * select(x[...] > 0.0, x[...], alpha * (exp(x[...]) - 1.0))"),
    "HardSigmoid": ("hard_sigmoid", "alpha=0.2, beta=0.5", "max(min(alpha * x[...] + beta, 1.0), 0.0)"),
    "HardSwish": ("hard_swish", "", "x[...] * max(min(x[...] / 6.0 + 0.5, 1.0), 0.0)"),
    "Softplus": ("softplus", "", "max(x[...], 0.0) + log(1.0 + exp(-abs(x[...])))"),  # log(1 + e^x), stably
    "Neg": ("negative", "", "-x[...]"),
    "Exp": ("exponential", "", "exp(x[...])"),
    "Log": ("logarithm", "", "log(x[...])"),
    "Sqrt": ("square_root", "", "sqrt(x[...])"),
    "Abs": ("absolute", "", "abs(x[...])"),
}


def unary(onnx_op: str) -> tuple[str, str]:
    name, attrs, value = UNARY[onnx_op]
    return name, f"op {name}(x[...]{'; ' + attrs if attrs else ''}) -> y[...] {{ y[...] = {value} }}\n"


def transpose(perm: tuple[int, ...]) -> tuple[str, str]:
    """y's dimension k is x's dimension perm[k]."""
    dims, idx = _names(len(perm))
    name = "transpose_" + "_".join(map(str, perm))
    read = [idx[perm.index(k)] for k in range(len(perm))]
    return name, (f"op {name}(x[{', '.join(dims)}]) -> y[{', '.join(dims[p] for p in perm)}] "
                  f"{{ y[{', '.join(idx)}] = x[{', '.join(read)}] }}\n")
