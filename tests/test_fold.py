"""Inference rewrites: a batchnorm folded into the weights before it (te/fold.py), and the
weight-only statements moved to a prepare program that runs when the weights change
(te/weights.py, the `weights` stage).

Each rewritten program is checked against what it replaced: on the reference interpreter
(prepare, then forward, against the whole unsplit forward pass) at small shapes, and through
the JIT against the float64 numpy forward pass (tests/numpy_net.py) at batch 1 and 3."""
from __future__ import annotations

import numpy as np
import pytest

import dnnc
from dnnc.driver.compile import lower
from dnnc.driver.programs import job_for
from dnnc.ir.interp import run as interp
from dnnc.te.expr import Binary, Const, Load, Unary, Var
from dnnc.te.fold import split_affine

import numpy_net

C = Load("C", (Var("n"), Var("f")))
M, S = Load("mean", (Var("f"),)), Load("std", (Var("f"),))

NET = """
network folds {
    input x: [3, 9, 10]
    a = conv(x, filters=8, kernel=3, stride=2, pad=1, bias=false) |> batchnorm |> relu
    b = conv(a, filters=8, kernel=3, pad=1) |> batchnorm
    r = add(b, a) |> relu
    d = conv(r, filters=8, kernel=3, pad=1, groups=8, bias=false) |> batchnorm |> relu6
    e = conv(d, filters=5, kernel=1) |> batchnorm
    kept = conv(e, filters=4, kernel=1)
    y = relu(kept)
    p = global_avgpool(y)
    o = dense(p, 6)
    output o
    output kept
}
"""


def _evaluate(e, values):
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Load):
        return values[e.tensor]
    if isinstance(e, Unary):
        return -_evaluate(e.a, values) if e.op == "neg" else np.sqrt(_evaluate(e.a, values))
    a, b = _evaluate(e.a, values), _evaluate(e.b, values)
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[e.op]


@pytest.mark.parametrize("expr", [
    Binary("+", Binary("*", Binary("/", Binary("-", C, M), Unary("sqrt", Binary("+", S, Const(1e-5)))),
                       Load("g", (Var("f"),))), Load("beta", (Var("f"),))),  # batchnorm
    Binary("-", Const(2.0), Binary("/", C, S)),
    Unary("neg", Binary("*", S, Binary("+", C, C))),
    Binary("*", Binary("-", C, M), Binary("+", S, Const(1.0))),
])
def test_split_affine_recovers_the_expression(expr):
    a, b = split_affine(expr, C)
    rng = np.random.default_rng(0)
    vals = {t: rng.uniform(0.5, 2.0) for t in ("C", "mean", "std", "g", "beta")}
    want = _evaluate(expr, vals)
    got = _evaluate(a, vals) * vals["C"] + _evaluate(b, vals)
    assert got == pytest.approx(want, rel=1e-12)
    assert not any(isinstance(x, Load) and x.tensor == "C" for e in (a, b) for x in e.walk())


@pytest.mark.parametrize("expr", [
    Binary("max", C, Const(0.0)),  # a ReLU is not affine: it must stay after the product
    Binary("*", C, C),
    Binary("/", M, C),
    Unary("sqrt", C),
])
def test_split_affine_refuses_what_is_not_affine(expr):
    assert split_affine(expr, C) is None


def _trained_looking(model, rng):
    for k in model.states:  # statistics a trained network has, so batchnorm is not the identity
        model.states[k] = rng.uniform(0.5, 2.0, model.states[k].shape) if k.endswith("var") else \
            rng.uniform(-0.5, 0.5, model.states[k].shape)
    for k in model.params:
        model.params[k] = rng.normal(0, 0.5, model.params[k].shape)


def test_folded_groups_and_the_prepare_program():
    net = dnnc.load(NET)
    u = lower(job_for(net.graph, "forward"), upto="weights")[-1][1]
    names = [n for n, _ in u.groups]
    # every batchnorm after a conv is folded, the ReLU after it fused: no batchnorm statement left
    assert "a.conv+batchnorm+relu" in names and "b.conv+batchnorm+add+relu" in names
    assert not any(st.tensor.endswith(".batchnorm") for _, sts in u.groups for st in sts)
    derived = {b.name for b in u.buffers if b.kind == "derived"}
    assert {"a.batchnorm.folded_w", "b.folded_b", "d.batchnorm.folded_w", "e.folded_w"} <= derived
    # the product `kept` is an output: nothing after it folds into it
    assert "kept.folded_w" not in derived
    p = lower(job_for(net.graph, "prepare"), upto="weights")[-1][1]
    written = {st.tensor for _, sts in p.groups for st in sts}
    assert derived <= written
    reads = {x.tensor for _, sts in p.groups for st in sts for x in st.value.walk() if isinstance(x, Load)}
    assert reads <= written | set(net.graph.params) | set(net.graph.states)


@pytest.mark.parametrize("batch", [1, 2])
def test_prepare_then_forward_on_the_interpreter(batch):
    net = dnnc.load(NET)
    g = net.at_batch(batch)
    rng = np.random.default_rng(batch)
    arrays = {n: rng.normal(0, 0.5, g.param_specs[n].shape) for n in g.params}
    arrays |= {n: rng.uniform(0.5, 2.0, g.state_specs[n].shape) for n in g.states}
    arrays["x"] = rng.normal(size=g.tensors["x"].shape)
    whole = interp(lower(job_for(g, "forward", schedule=False, hoist=False), upto="loops")[-1][1].program,
                   arrays)  # unfolded, unsplit
    prepared = interp(lower(job_for(g, "prepare"), upto="loops")[-1][1].program, arrays)
    fwd = lower(job_for(g, "forward"), upto="loops")[-1][1].program
    derived = {b.name: prepared[b.name] for b in fwd.buffers if b.kind == "derived"}
    assert derived, "nothing was moved to the prepare program"
    got = interp(fwd, arrays | derived)
    for out in ("o", "kept"):
        np.testing.assert_allclose(got[out], whole[out], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_jit_matches_numpy_and_follows_weight_changes(batch):
    net = dnnc.load(NET)
    rng = np.random.default_rng(7)
    m = net.compile(batch=batch, threads=1)
    _trained_looking(m, rng)
    x = rng.normal(size=(batch, 3, 9, 10)).astype(np.float32)

    def check():
        want, _ = numpy_net.run(m.graph, {k: np.asarray(v) for k, v in m.params.items()}, {"x": x},
                                {k: np.asarray(v) for k, v in m.states.items()})
        got = m.forward(x=x)
        for out in ("o", "kept"):
            np.testing.assert_allclose(got[out], want[out], rtol=2e-4, atol=2e-5)

    check()
    m.params["b.conv.weight"] = rng.normal(size=m.params["b.conv.weight"].shape)  # through Params
    check()
    m.buffers["e.batchnorm.running_var"][...] = 3.0  # directly, then said
    m.weights_changed()
    check()
    # a model's buffers are its own: another model's changes do not reach it
    other = net.compile(batch=batch, threads=1)
    other.params["a.conv.weight"] = np.zeros(other.params["a.conv.weight"].shape)
    check()


def test_training_steps_refresh_the_folded_weights():
    net = dnnc.load(NET.replace("output kept", "label t: 6\n    loss softmax_cross_entropy(o, t)"))
    m = net.compile(batch=2, threads=1)
    rng = np.random.default_rng(3)
    x, t = rng.normal(size=(2, 3, 9, 10)).astype(np.float32), np.array([1, 4])
    before = m.forward(x=x)["o"]
    for _ in range(3):
        m.train_step("sgd(lr=0.5)", x=x, t=t)
    after = m.forward(x=x)["o"]
    fresh = net.compile(batch=2, threads=1, schedule=False)
    fresh.params.update_from({k: np.asarray(v) for k, v in m.params.items()})
    fresh.states.update_from({k: np.asarray(v) for k, v in m.states.items()})
    np.testing.assert_allclose(after, fresh.forward(x=x)["o"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(before, after)


def test_a_weight_only_pass_runs_once_per_change():
    net = dnnc.load(NET)
    m = net.compile(batch=1, threads=1)
    fwd = m.executable("forward")
    assert fwd.prepare is not None
    runs = []
    real = fwd.prepare.run
    fwd.prepare.run = lambda: (runs.append(1), real())
    x = np.zeros((1, 3, 9, 10), np.float32)
    for _ in range(4):
        m.forward(x=x)
    m.params["e.conv.weight"] = np.ones(m.params["e.conv.weight"].shape)
    for _ in range(3):
        m.forward(x=x)
    assert len(runs) == 2  # once at the first call, once after the change
