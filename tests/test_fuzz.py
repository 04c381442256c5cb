"""Property tests: random networks, random schedules and random damage to source text.

1. Random small valid networks, compiled and run, agree with a numpy reference.
2. The same networks under random schedule steps (any axis, width, unroll factor, vectors,
   reduction blocks, panels, threads, algorithms, naive): each step is refused with a
   DnncError, or the compiled network still agrees with the reference. Never a wrong answer,
   never an internal error (the verifier's refusal would be one).
3. Valid sources with random damage (characters deleted, tokens inserted, numbers replaced,
   an op swapped for another, an argument dropped or added):
   loading and compiling either works or raises a located DnncError; nothing else.

Hypothesis draws a chain of layers (conv with random kernel/stride/pad/filters/groups,
relu/sigmoid/tanh, maxpool/avgpool with random size/stride/pad, now and then two branches
joined by add or concat) ending in dense, writes it as .net source, compiles it with
dnnc.load(src).compile(batch=2), sets random parameters and compares the forward pass with
the float64 reference below. Shapes are computed while drawing; a layer that would not fit
is not drawn, so every generated network is valid.

DNNC_FUZZ_EXAMPLES=500 python -m pytest -q tests/test_fuzz.py  explores more (and randomly).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace

import numpy as np
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import dnnc
from dnnc.base.errors import DnncError

EXAMPLES = int(os.environ.get("DNNC_FUZZ_EXAMPLES", "25"))


# ----------------------------------------------------------------------------- reference (float64)

def ref_conv(x, w, b, stride, pad, groups):
    n, c, h, wd = x.shape
    f, cg, k, _ = w.shape
    fg = f // groups
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # zero padding
    out = np.zeros((n, f, ho, wo))
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * fg:(g + 1) * fg]
        for r in range(k):
            for s in range(k):
                patch = xs[:, :, r:r + stride * (ho - 1) + 1:stride, s:s + stride * (wo - 1) + 1:stride]
                out[:, g * fg:(g + 1) * fg] += np.einsum("nchw,fc->nfhw", patch, ws[:, :, r, s])
    return out + b[None, :, None, None]


def _windows(x, size, stride, pad, fill):
    """Every pooling window's elements, stacked on a new last axis."""
    n, c, h, w = x.shape
    ho, wo = (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    parts = [xp[:, :, p:p + stride * (ho - 1) + 1:stride, q:q + stride * (wo - 1) + 1:stride]
             for p in range(size) for q in range(size)]
    return np.stack(parts, axis=-1)


def ref_maxpool(x, size, stride, pad):
    return _windows(x, size, stride, pad, -np.inf).max(axis=-1)  # padding never wins


def ref_avgpool(x, size, stride, pad):
    total = _windows(x, size, stride, pad, 0.0).sum(axis=-1)
    count = _windows(np.ones_like(x), size, stride, pad, 0.0).sum(axis=-1)  # real elements only
    return total / count


def ref_dense(x, w, b):
    return x.reshape(x.shape[0], -1) @ w.T + b


ACTS = {"relu": lambda a: np.maximum(a, 0.0), "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a)), "tanh": np.tanh}


# ----------------------------------------------------------------------------- random networks

@dataclass
class Net:
    """The .net source lines and, in step, a program for the reference: (out, op, args)."""

    shape: tuple[int, int, int]
    lines: list[str] = field(default_factory=list)
    steps: list[tuple] = field(default_factory=list)
    shapes: dict = field(default_factory=dict)
    count: int = 0

    def fresh(self) -> str:
        self.count += 1
        return f"t{self.count}"

    def source(self) -> str:
        c, h, w = self.shape
        body = "\n".join("    " + line for line in self.lines)
        return f"network fuzz {{\n    input x: [{c}, {h}, {w}]\n{body}\n    output {self.steps[-1][0]}\n}}\n"


def _out(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


@st.composite
def conv_args(draw, shape, same=False):
    """(text, args, out_shape) for a conv on `shape`, or None when nothing fits."""
    c, h, w = shape
    k = draw(st.sampled_from([1, 3])) if same else draw(st.integers(1, min(5, h + 2, w + 2)))
    pad = (k - 1) // 2 if same else draw(st.integers(0, k - 1))
    stride = 1 if same else draw(st.integers(1, 3))
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
    filters = groups * draw(st.integers(1, 3))
    ho, wo = _out(h, k, stride, pad), _out(w, k, stride, pad)
    if ho < 1 or wo < 1:
        return None
    text = f"filters={filters}, kernel={k}"
    text += f", stride={stride}" if stride != 1 or draw(st.booleans()) else ""
    text += f", pad={pad}" if pad else ""
    text += f", groups={groups}" if groups != 1 else ""
    return text, ("conv", filters, k, stride, pad, groups), (filters, ho, wo)


@st.composite
def pool_args(draw, shape):
    c, h, w = shape
    size = draw(st.integers(1, min(3, h, w)))
    stride = draw(st.integers(1, size + 1))
    pad = draw(st.integers(0, size // 2))
    ho, wo = _out(h, size, stride, pad), _out(w, size, stride, pad)
    if ho < 1 or wo < 1:
        return None
    op = draw(st.sampled_from(["maxpool", "avgpool"]))
    text = f"{size}" + (f", stride={stride}" if stride != size else "") + (f", pad={pad}" if pad else "")
    return text, (op, size, stride, pad), (c, ho, wo)


@st.composite
def networks(draw) -> Net:
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(3, 10)), draw(st.integers(3, 10))
    net = Net((c, h, w))
    cur, shape = "x", (c, h, w)
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "act", "pool", "branch"]))
        out = net.fresh()
        if kind == "conv":
            got = draw(conv_args(shape))
            if got is None:
                continue
            text, args, shape = got
            stages = [(args, None)]
            line = f"{out} = conv({cur}, {text})"
            if draw(st.booleans()):  # a pipeline: conv |> act
                act = draw(st.sampled_from(sorted(ACTS)))
                line += f" |> {act}"
                stages.append((("act", act), None))
            net.lines.append(line)
            net.steps.append((out, cur, stages))
        elif kind == "act":
            act = draw(st.sampled_from(sorted(ACTS)))
            net.lines.append(f"{out} = {act}({cur})" if draw(st.booleans()) else f"{out} = {cur} |> {act}")
            net.steps.append((out, cur, [(("act", act), None)]))
        elif kind == "pool":
            got = draw(pool_args(shape))
            if got is None:
                continue
            text, args, shape = got
            net.lines.append(f"{out} = {args[0]}({cur}, {text})")
            net.steps.append((out, cur, [(args, None)]))
        else:
            # two branches of the same spatial size, joined by add (same channels) or concat
            a_text, a_args, a_shape = draw(conv_args(shape, same=True))
            a = out
            net.lines.append(f"{a} = conv({cur}, {a_text})")
            net.steps.append((a, cur, [(a_args, None)]))
            join = draw(st.sampled_from(["add", "concat", "concat-self"]))
            if join == "concat-self":  # the branch and the tensor it came from
                b, b_shape = cur, shape
            else:
                b = net.fresh()
                act = draw(st.sampled_from(sorted(ACTS)))
                if join == "add":
                    net.lines.append(f"{b} = {act}({a})")
                    net.steps.append((b, a, [(("act", act), None)]))
                    b_shape = a_shape
                else:
                    b_text, b_args, b_shape = draw(conv_args(shape, same=True))
                    net.lines.append(f"{b} = conv({cur}, {b_text}) |> {act}")
                    net.steps.append((b, cur, [(b_args, None), (("act", act), None)]))
            y = net.fresh()
            op = "add" if join == "add" else "concat"
            net.lines.append(f"{y} = {op}({a}, {b})")
            net.steps.append((y, (a, b), [((op,), None)]))
            out = y
            shape = a_shape if op == "add" else (a_shape[0] + b_shape[0],) + a_shape[1:]
        cur = out
    # dense at the end, sometimes two
    if draw(st.booleans()):
        out = net.fresh()
        units = draw(st.integers(1, 6))
        act = draw(st.sampled_from(sorted(ACTS)))
        net.lines.append(f"{out} = dense({cur}, {units}) |> {act}")
        net.steps.append((out, cur, [(("dense", units), None), (("act", act), None)]))
        cur = out
    out = net.fresh()
    units = draw(st.integers(1, 6))
    net.lines.append(f"{out} = dense({cur}, units={units})")
    net.steps.append((out, cur, [(("dense", units), None)]))
    return net


def reference(net: Net, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    vals = {"x": x}
    for out, src, stages in net.steps:
        v = vals[src] if isinstance(src, str) else None
        for args, _ in stages:
            op = args[0]
            if op == "conv":
                _, _, _, stride, pad, groups = args
                v = ref_conv(v, params[f"{out}.weight"], params[f"{out}.bias"], stride, pad, groups)
            elif op == "dense":
                v = ref_dense(v, params[f"{out}.weight"], params[f"{out}.bias"])
            elif op == "act":
                v = ACTS[args[1]](v)
            elif op == "maxpool":
                v = ref_maxpool(v, *args[1:])
            elif op == "avgpool":
                v = ref_avgpool(v, *args[1:])
            elif op == "add":
                v = vals[src[0]] + vals[src[1]]
            elif op == "concat":
                v = np.concatenate([vals[src[0]], vals[src[1]]], axis=1)
            else:
                raise AssertionError(op)
        vals[out] = v
    return vals[net.steps[-1][0]]


# ----------------------------------------------------------------------------- the properties

def _random_params(network, model, rng) -> dict:
    params = {}
    for name, shape in network.params.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        params[name] = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32)
        model.params[name] = params[name]
    return params


def _agrees(net: Net, network, model, seed: int, src: str) -> None:
    rng = np.random.default_rng(seed)
    params = _random_params(network, model, rng)
    # three examples: one full batch of two and a partial one
    x = rng.normal(0.0, 1.0, (3,) + net.shape).astype(np.float32)
    (name,) = model.outputs
    got = model.forward(x=x)[name]
    want = reference(net, x.astype(np.float64), {k: v.astype(np.float64) for k, v in params.items()})
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=src)


@settings(max_examples=EXAMPLES, deadline=None, derandomize="DNNC_FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(net=networks(), seed=st.integers(0, 2**32 - 1))
def test_random_network_matches_numpy(net: Net, seed: int):
    src = net.source()
    note(src)
    network = dnnc.load(src)
    _agrees(net, network, network.compile(batch=2), seed, src)


AXES = ["n", "f", "i", "j", "k", "c", "u", "r", "s", "p", "q", "_0", "_1", "_2", "_3", "zz"]


@st.composite
def schedule_steps(draw, tiles: list) -> list[str]:
    """Up to three steps as a user writes them for --schedule, most of them changes of a
    default tile: a random axis, width, unroll, vectors, block, panel or parallel flag."""
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        t = draw(st.sampled_from(tiles))
        kind = draw(st.sampled_from(["tile", "tile", "tile", "naive", "algorithm"]))
        if kind == "naive":
            steps.append(f"naive({t.tensor})")
        elif kind == "algorithm":
            steps.append(f"algorithm({t.tensor}, {draw(st.sampled_from(['direct', 'im2col', 'winograd']))})")
        else:
            axes = AXES + [a for a in (t.vector, t.unroll) if a]
            u = draw(st.one_of(st.none(), st.sampled_from(axes)))
            tile = replace(t, vector=draw(st.sampled_from(axes)), width=draw(st.sampled_from([1, 2, 3, 4, 8, 16, 32])),
                           unroll=u, factor=draw(st.integers(1, 9)) if u else 1, vectors=draw(st.integers(1, 3)),
                           parallel=draw(st.booleans()), panel=draw(st.booleans()),
                           block=draw(st.one_of(st.none(), st.tuples(st.sampled_from(axes), st.integers(1, 40)))))
            steps.append(str(tile))
    return steps


@settings(max_examples=max(EXAMPLES // 2, 8), deadline=None, derandomize="DNNC_FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(net=networks(), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_random_schedules_are_refused_or_agree_with_numpy(net: Net, data, seed: int):
    from dnnc.driver.programs import lower_graph
    from dnnc.schedule.steps import Tile, parse_step

    src = net.source()
    network = dnnc.load(src)
    tiles = [t for t in lower_graph(network.at_batch(2)).schedule if isinstance(t, Tile)]
    if not tiles:
        return
    steps = data.draw(schedule_steps(tiles))
    note(src + "\n" + "\n".join(steps))
    try:
        model = network.compile(batch=2, schedule=[parse_step(s) for s in steps], threads=2)
    except DnncError as e:  # refused, with a reason: a user error, not a crash
        assert e.message, steps
        event("schedule refused")
        return
    event("schedule compiled")
    _agrees(net, network, model, seed, src + "\n" + "\n".join(steps))


TOKENS = [",", ")", "(", "relu", "-1", "0", "x", "|>", "{", "}", "filters=", "99999999", "1.5", "\"s\"", "[", "]",
          "=", "op", "network", "\n", "#", "..."]


OPS = ["conv", "dense", "relu", "sigmoid", "tanh", "maxpool", "avgpool", "add", "concat", "flatten", "softmax",
       "dropout", "batchnorm"]
ARGS = ["stride", "pad", "groups", "filters", "kernel", "size", "units", "rate"]


@st.composite
def damaged(draw) -> str:
    src = draw(networks()).source()
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(src)))
        how = draw(st.sampled_from(["delete", "insert", "number", "op", "argument"]))
        if how == "op":  # another op in a call that still parses
            ops = [m for m in re.finditer(r"\b(conv|dense|relu|sigmoid|tanh|maxpool|avgpool|add|concat|flatten)\b",
                                          src)]
            if ops:
                m = draw(st.sampled_from(ops))
                src = src[:m.start()] + draw(st.sampled_from(OPS)) + src[m.end():]
        elif how == "argument":  # an argument dropped, or another one added
            args = list(re.finditer(r", \w+=-?\d+", src))
            if args and draw(st.booleans()):
                m = draw(st.sampled_from(args))
                src = src[:m.start()] + src[m.end():]
            elif args:
                m = draw(st.sampled_from(args))
                extra = f", {draw(st.sampled_from(ARGS))}={draw(st.integers(-2, 9))}"
                src = src[:m.end()] + extra + src[m.end():]
        elif how == "delete":
            src = src[:at] + src[at + draw(st.integers(1, 8)):]
        elif how == "insert":
            src = src[:at] + draw(st.sampled_from(TOKENS)) + src[at:]
        else:
            digits = [m.start() for m in re.finditer(r"\d+", src)]
            if digits:
                k = draw(st.sampled_from(digits))
                end = re.match(r"\d+", src[k:]).end() + k
                src = src[:k] + str(draw(st.sampled_from([0, 1, 2, 3, 7, 100, 10**9, 10**20]))) + src[end:]
    return src


@settings(max_examples=EXAMPLES * 4, deadline=None, derandomize="DNNC_FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(src=damaged())
def test_damaged_sources_load_or_fail_with_a_located_error(src: str):
    note(src)
    n_lines = len(src.splitlines()) + 1
    try:
        network = dnnc.load(src)
    except DnncError as e:
        assert e.message
        if e.loc is not None:
            assert 1 <= e.loc.line <= n_lines and e.loc.col >= 1, e.render()
        event("refused when loaded")
        return
    try:  # it still parses: it compiles and runs, or is refused (too big, say) with a reason
        model = network.compile(batch=2)
    except DnncError as e:
        assert e.message
        event("refused when compiled")
        return
    event("compiled and ran")
    feed = {n: np.ones((2,) + tuple(model.graph.tensors[n].shape[1:]), np.float32) for n in model.inputs}
    model.forward(**feed)
