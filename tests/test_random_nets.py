"""Random valid networks, written as .net source, against three references.

Hypothesis draws a DAG of layers: conv (kernel 1-5, stride, pad, groups up to depthwise, with
and without bias), maxpool and avgpool (with pads), global_avgpool, batchnorm, relu, relu6,
leaky_relu, sigmoid, tanh, clip, dropout, dense, layernorm, residual add (of equal shapes),
concat, and pipelines such as conv |> batchnorm |> relu |> maxpool (which training fuses), on
a random input (an image [c, h, w] or a vector [k]), ending in dense and a loss (cross entropy
or mse). Shapes are computed while drawing, so every network is valid; dnnc's shapes must
equal them. Each network is compiled in float64 at a batch of 1, 3, 16 or 64:

- the forward pass (inference) on 1, 3, 16 and 64 examples, run in chunks of the compiled
  batch, against the numpy float64 reference (tests/numpy_net.py) and the PyTorch twin; and
  compiled in float32 (as deployed) against numpy, to 1e-4 of the output's scale;
- in training (batchnorm on batch statistics): the loss and the running statistics after the
  step against numpy, when every dropout has rate 0;
- the gradient of a sample of entries of every parameter against central finite
  differences; dropout's mask is a function of the step, so the probes see the same mask. A
  point where the loss has a kink (a relu or max switching within the step) is accepted when
  a ten times smaller step agrees, and such points must stay rare;
- every parameter's gradient against PyTorch autograd, when every dropout has rate 0 (dnnc's
  mask is not torch's) and torch is installed.

DNNC_RANDOM_NETS=200 python -m pytest -q tests/test_random_nets.py  checks more networks.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
for p in (HERE.parent, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import dnnc  # noqa: E402
import numpy_net  # noqa: E402

try:
    import torch
    from torch_twin import Twin
except ImportError:
    torch = None

EXAMPLES = int(os.environ.get("DNNC_RANDOM_NETS", "20"))
BATCHES = (1, 3, 16, 64)
EPS = 1e-6  # central difference step
RTOL = 1e-6  # finite differences against autodiff, relative to the larger
FLOOR = 1e-3  # ... at least this times the loss (at least 1)
SAMPLES = 4  # entries per parameter tensor
TIGHT = 1e-9  # float64 against float64 (numpy, torch), relative to the tensor's scale
TOL32 = 1e-4  # float32 against float64
CHECKED = Counter()  # what this run checked, printed when the module ends

ACTS = ["relu", "relu6", "leaky_relu(slope=0.2)", "sigmoid", "tanh", "clip(lo=-0.5, hi=0.5)"]


@dataclass
class Gen:
    """A network being drawn: its lines and the per-example shape of every bound tensor."""

    input: tuple[int, ...]
    lines: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    ops: Counter = field(default_factory=Counter)
    dropout: bool = False  # a dropout of rate > 0: training not comparable with numpy or torch
    loss: str = "softmax_cross_entropy"
    classes: int = 2

    def fresh(self) -> str:
        return f"t{len(self.shapes)}"

    def source(self) -> str:
        label = f"[{self.classes}]" if self.loss == "mse" else f"{self.classes}"
        body = "\n".join("    " + line for line in self.lines)
        return (f"network random {{\n    input x: {list(self.input)}\n    label y: {label}\n{body}\n"
                f"    loss {self.loss}(logits, y)\n    output logits\n}}\n")


def out_size(n, k, stride, pad):
    return (n + 2 * pad - k) // stride + 1


def least_pad(k, shape):
    """The least pad that fits a k x k window into the image (one output row and column)."""
    return max(0, -(-(k - min(shape[1:])) // 2))


@st.composite
def conv(draw, shape, filters=None):
    """(call without its input, output shape) of a conv that fits `shape`; given `filters`,
    a 'same' conv (kernel 1 or 3, stride 1) that keeps the height and width."""
    c, h, w = shape
    if filters is None:
        k = draw(st.integers(1, 5))
        pad, stride = draw(st.integers(least_pad(k, shape), max(least_pad(k, shape), k - 1))), draw(st.integers(1, 3))
    else:
        k = draw(st.sampled_from([1, 3]))
        pad, stride = k // 2, 1
    groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0 and (filters or g) % g == 0]))
    filters = filters or groups * draw(st.integers(1, max(1, 6 // groups)))
    text = f"filters={filters}, kernel={k}" + (f", stride={stride}" if stride > 1 else "")
    text += (f", pad={pad}" if pad else "") + (f", groups={groups}" if groups > 1 else "")
    text += ", bias=false" if draw(st.booleans()) else ""
    return f"conv({text})", (filters, out_size(h, k, stride, pad), out_size(w, k, stride, pad))


@st.composite
def pool(draw, shape):
    c, h, w = shape
    size = draw(st.integers(1, 3))
    pad = draw(st.integers(least_pad(size, shape), size // 2))  # the prelude allows up to size / 2
    stride = draw(st.integers(1, 3))
    op = draw(st.sampled_from(["maxpool", "avgpool"]))
    text = f"{size}" + (f", stride={stride}" if stride != size else "") + (f", pad={pad}" if pad else "")
    return f"{op}({text})", (c, out_size(h, size, stride, pad), out_size(w, size, stride, pad))


@st.composite
def layer(draw, gen: Gen) -> None:
    """One more layer on a recent tensor: a new binding, or a stage piped onto the last one."""
    names = list(gen.shapes)
    src = draw(st.sampled_from(names[-3:]))
    shape = gen.shapes[src]
    image = len(shape) == 3
    # hypothesis favours the first choices: the image layers, then the others
    kinds = ["conv", "block", "batchnorm", "pool", "global_avgpool"] if image else []
    kinds += ["act", "add", "dense", "layernorm", "dropout", "act"]
    kinds += ["concat"] if shape[0] <= (6 if image else 12) else []  # channels, features stay few
    kind = draw(st.sampled_from(kinds))
    gen.ops[kind] += 1
    if kind in ("add", "concat"):
        join(draw, gen, kind, src)
        return
    if kind == "block":  # conv |> [batchnorm] |> act |> [pool]: what training fuses
        call, out = draw(conv(shape))
        call += " |> batchnorm" if draw(st.booleans()) else ""
        call += f" |> {draw(st.sampled_from(ACTS))}"
        if draw(st.booleans()):
            pooled, out = draw(pool(out))
            call += f" |> {pooled}"
    elif kind == "conv":
        call, out = draw(conv(shape))
    elif kind == "pool":
        call, out = draw(pool(shape))
    elif kind == "global_avgpool":
        call, out = "global_avgpool", (shape[0], 1, 1)
    elif kind == "batchnorm":
        call, out = draw(st.sampled_from(["batchnorm", "batchnorm(momentum=0.3)", "batchnorm(eps=0.001)"])), shape
    elif kind == "act":
        call, out = draw(st.sampled_from(ACTS)), shape
    elif kind == "dropout":
        rate = draw(st.sampled_from([0.0, 0.3]))
        gen.dropout |= rate > 0
        call, out = f"dropout({rate})", shape
    elif kind == "dense":
        units = draw(st.integers(1, 6))
        call, out = f"dense({units})", (units,)
    else:  # layernorm; an image feeds it flattened
        call, out = draw(st.sampled_from(["layernorm", "layernorm(eps=0.001)"])), (int(np.prod(shape)),)
    if src == names[-1] and gen.lines and draw(st.booleans()):  # src |> call in the last binding
        gen.lines[-1] += f" |> {call}"
        gen.shapes[src] = out
        return
    name = gen.fresh()
    op, _, args = call.partition("(")
    gen.lines.append(f"{name} = {op}({src}" + (f", {args}" if args else ")"))
    gen.shapes[name] = out


def join(draw, gen: Gen, kind: str, a: str) -> None:
    """add(a, b) of equal shapes or concat(a, b) along channels, b an earlier tensor that fits,
    a itself, or a new branch from a (a 'same' conv, or a dense layer)."""
    shape = gen.shapes[a]
    fits = [n for n, s in gen.shapes.items() if (s == shape if kind == "add" else
                                                 len(s) == len(shape) and s[1:] == shape[1:])]
    how = draw(st.sampled_from(["earlier", "branch"]))
    if how == "earlier":
        b = draw(st.sampled_from(fits))  # a itself is always among them
    else:
        b = gen.fresh()
        if len(shape) == 3:
            call, out = draw(conv(shape, filters=shape[0] if kind == "add" else draw(st.integers(1, 4))))
        else:
            units = shape[0] if kind == "add" else draw(st.integers(1, 6))
            call, out = f"dense({units})", (units,)
        op, _, args = call.partition("(")
        gen.lines.append(f"{b} = {op}({a}, {args} |> {draw(st.sampled_from(ACTS))}")
        gen.shapes[b] = out
    y = gen.fresh()
    gen.lines.append(f"{y} = {kind}({a}, {b})")
    sb = gen.shapes[b]
    gen.shapes[y] = shape if kind == "add" else (shape[0] + sb[0],) + shape[1:]


@st.composite
def networks(draw) -> Gen:
    if draw(st.integers(0, 3)):
        gen = Gen((draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 8))))
    else:
        gen = Gen((draw(st.integers(1, 12)),))
    gen.shapes["x"] = gen.input
    for _ in range(draw(st.integers(2, 7))):
        draw(layer(gen))
    gen.classes = draw(st.integers(2, 5))
    gen.loss = draw(st.sampled_from(["softmax_cross_entropy", "mse"]))
    gen.lines.append(f"logits = dense({list(gen.shapes)[-1]}, {gen.classes})")
    gen.shapes["logits"] = (gen.classes,)
    return gen


# ----------------------------------------------------------------------------- the checks

def err(got, want, floor: float = 0.0) -> float:
    """The largest |got - want|, relative to want's largest magnitude (at least `floor`)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), floor, 1e-30))


def randomize(graph, model, rng) -> None:
    """Parameters and running statistics off their initial values (a unit scale, a zero
    shift and zero means have special gradients), weights at the scale of their fan-in."""
    norms = {p for layer in graph.layers if layer.op in ("batchnorm", "layernorm") for p in layer.params}
    for k, p in model.params.items():
        if k in norms:
            p[...] = (1.0 if k.endswith("weight") else 0.0) + 0.3 * rng.normal(size=p.shape)
        elif k.endswith("weight"):
            p[...] = rng.normal(size=p.shape) / np.sqrt(np.prod(p.shape[1:]))
        else:
            p[...] = 0.3 * rng.normal(size=p.shape)
    for k, s in model.states.items():
        s[...] = rng.uniform(0.5, 2.0, s.shape) if k.endswith("running_var") else rng.normal(0, 0.3, s.shape)


def needed(g, tensors) -> list:
    """The layers that the tensors depend on (layers are in source order)."""
    need, out = set(tensors), []
    for layer in reversed(g.layers):
        if layer.output in need:
            need |= set(layer.inputs)
            out.append(layer)
    return out


def finite_differences(model, feed, loss, grads, rng) -> tuple[int, int]:
    """Central differences for a sample of every parameter's entries: (entries, kinks)."""
    def rel(a, b):  # the differences' roundoff is 1e-16 |loss| / EPS
        return abs(a - b) / max(abs(a), abs(b), FLOOR * max(1.0, abs(loss)))

    def central(p, idx, eps):
        old = p[idx]
        p[idx] = old + eps
        hi = model.loss_and_grad(**feed)[0]
        p[idx] = old - eps
        lo = model.loss_and_grad(**feed)[0]
        p[idx] = old
        return (hi - lo) / (2 * eps)

    checked = kinks = 0
    biggest = 0.0
    for name, p in model.params.items():
        n = p.size
        for flat in (range(n) if n <= SAMPLES else rng.choice(n, SAMPLES, replace=False)):
            idx = tuple(int(i) for i in np.unravel_index(int(flat), p.shape))
            ad, fd = float(grads[name][idx]), central(p, idx, EPS)
            checked += 1
            biggest = max(biggest, abs(fd))
            if rel(fd, ad) > RTOL:  # a kink within the step, or a wrong gradient
                small = central(p, idx, EPS / 10)
                assert rel(small, ad) <= 10 * RTOL, \
                    f"gradient of {name}{list(idx)}: autodiff {ad:.10g}, finite differences {fd:.10g} " \
                    f"(step {EPS}) and {small:.10g} (step {EPS / 10})"
                kinks += 1
    assert biggest > 1e-6, "the loss depends on some parameter"
    assert kinks <= max(1, checked // 10), f"{kinks} of {checked} entries at kinks"
    return checked, kinks


class _Summary:
    """A line at the end of the run: how many random networks it checked, and how."""

    def pytest_terminal_summary(self, terminalreporter):
        c = CHECKED
        terminalreporter.write_line(
            f"test_random_nets: {c['networks']} random networks checked: forward against numpy at "
            f"{', '.join(map(str, BATCHES))} examples, {c['entries']} gradient entries against finite "
            f"differences ({c['kinks']} at kinks), all gradients of {c['torch']} against PyTorch")


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    if not request.config.pluginmanager.has_plugin("random-nets-summary"):
        request.config.pluginmanager.register(_Summary(), "random-nets-summary")


@settings(derandomize=True, deadline=None, max_examples=EXAMPLES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(gen=networks(), batch=st.sampled_from((16, 3, 64, 1)), scale=st.sampled_from([1.0, 4.0]),
       seed=st.integers(0, 2**32 - 1))
def test_random_network_matches_numpy_finite_differences_and_torch(gen: Gen, batch: int, scale: float, seed: int):
    src = gen.source()
    note(f"batch {batch}, inputs x {scale}\n{src}")
    net = dnnc.load(src)
    assert {n: net.graph.tensors[n].shape[1:] for n in gen.shapes} == gen.shapes
    model = net.compile(batch=batch, dtype="f64", seed=seed % 1000)
    rng = np.random.default_rng(seed)
    randomize(net.graph, model, rng)
    params, states = dict(model.params), {k: v.copy() for k, v in model.states.items()}

    def inputs(n):
        x = scale * rng.normal(size=(n,) + gen.input)
        y = rng.normal(size=(n, gen.classes)) if gen.loss == "mse" else rng.integers(0, gen.classes, n)
        return {"x": x, "y": y}

    for n in BATCHES:  # one compiled batch, run in chunks
        x = inputs(n)["x"]
        got = model.forward(x=x)["logits"]
        want = numpy_net.run(net.graph, params, {"x": x}, states)[0]["logits"]
        assert err(got, want) <= TIGHT, f"forward of {n} examples: {err(got, want):.3g}"
        if torch is not None and n == batch:
            assert err(got, Twin(net.graph, params, states).run({"x": x})["logits"].detach()) <= TIGHT

    # and in float32, as deployed, on values float32 holds exactly
    f32 = net.compile(batch=batch, seed=0)
    exact = {k: np.float32(v).astype(np.float64) for k, v in params.items()}
    f32.params.update_from(exact)
    f32.states.update_from(states)
    x = np.float32(inputs(batch)["x"]).astype(np.float64)
    got = f32.forward(x=x)["logits"]
    want = numpy_net.run(net.graph, exact, {"x": x}, {k: np.float32(v) for k, v in states.items()})[0]["logits"]
    assert err(got, want) <= TOL32, f"float32 forward: {err(got, want):.3g}"

    g = net.at_batch(batch, training=True)
    feed = inputs(batch)
    loss, grads = model.loss_and_grad(**feed)
    assert set(grads) == set(model.params)  # off the loss's path too (zero: the differences check)
    if not gen.dropout:  # numpy's training pass: batch statistics, and the running ones after
        vals, after = numpy_net.run(g, params, feed, states)
        assert err(loss, vals["loss"]) <= TIGHT
        # the batchnorms that feed the output (dnnc's step computes no unobservable layer)
        for layer in needed(g, g.outputs):
            for k in numpy_net.layer_tensors(g, layer).values():
                if k in after:
                    assert err(model.states[k], after[k]) <= TIGHT, k
    checked, kinks = finite_differences(model, feed, loss, grads, rng)
    CHECKED.update(networks=1, entries=checked, kinks=kinks)
    event(f"batch {batch}")
    for kind in gen.ops:
        event(f"has {kind}")

    # torch's batchnorm refuses one value per channel in training (dnnc: the output is the shift)
    single = any(layer.op == "batchnorm" and np.prod(g.tensors[layer.inputs[0]].shape) ==
                 g.tensors[layer.inputs[0]].shape[1] for layer in g.layers)
    if torch is None or gen.dropout or single:
        event("gradients not compared with torch")
        return
    twin = Twin(g, params, states)
    tl = twin.run(feed)["loss"]
    tl.backward()
    assert err(loss, tl.item()) <= TIGHT
    # a gradient that batchnorm cancels is zero up to roundoff: scales count as at least 1e-3
    # of the largest gradient
    floor = 1e-3 * max(float(p.grad.abs().max()) if p.grad is not None else 0.0 for p in twin.params.values())
    for k, p in twin.params.items():
        want = p.grad.numpy() if p.grad is not None else np.zeros(p.shape)  # None: not on the loss's path
        assert err(grads[k], want, floor) <= TIGHT, f"gradient of {k}: {err(grads[k], want, floor):.3g}"
    CHECKED.update(torch=1)


def test_loss_and_grad_has_every_parameter():
    # the random networks found that a layer the loss does not depend on had no gradient at all
    src = """network t {
        input x: [3]
        label y: 2
        unused = dense(x, 4)
        logits = dense(x, 2)
        loss softmax_cross_entropy(logits, y)
    }"""
    model = dnnc.load(src).compile(batch=2, dtype="f64")
    _, grads = model.loss_and_grad(x=np.ones((2, 3)), y=np.array([0, 1]))
    assert set(grads) == set(model.params)
    assert not grads["unused.weight"].any() and not grads["unused.bias"].any()
