"""Gradients from autodiff against central finite differences (float64), for every built-in op
and a user-defined one; the tie rule of max; and whole-network gradients of LeNet-5 and
LeNet-300-100 against PyTorch autograd (float32).

Each finite-difference case is a tiny network whose loss depends on the op through every
parameter: ops whose output is not a loss's input are followed by `dense(..., k)` and a loss.
Parameters are moved off their (often constant) initial values first, so a gradient that
vanishes at the initialization (a zero bias, a unit scale) cannot hide a wrong formula.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dnnc  # noqa: E402
from dnnc.io import data as datamod  # noqa: E402

EPS = 1e-6  # central difference step
RTOL = 1e-6
FLOOR = 1e-3  # below this size, gradients are compared absolutely (FD roundoff is ~1e-10)
SAMPLES = 16  # entries checked per parameter tensor (all of them when it has fewer)


def rel_err(a: float, b: float) -> float:
    """|a - b| relative to the larger of the two, and absolute for values near zero."""
    return abs(a - b) / max(abs(a), abs(b), FLOOR)


def perturb_params(model, rng, scale=0.3):
    for name, p in model.params.items():
        p[...] = p + scale * rng.normal(size=p.shape)


def entries(shape, rng, k=SAMPLES):
    n = int(np.prod(shape))
    flat = range(n) if n <= k else rng.choice(n, size=k, replace=False)
    return [np.unravel_index(int(i), shape) for i in flat]


def fd_check(src: str, batch: int, feed: dict, seed: int = 0, perturb: float = 0.3, model=None):
    """Every parameter's gradient (a sample of entries for big ones) against central differences."""
    rng = np.random.default_rng(seed)
    if model is None:
        model = dnnc.load(src).compile(batch=batch, dtype="f64", seed=seed)
        if perturb:
            perturb_params(model, rng, perturb)
    loss, grads = model.loss_and_grad(**feed)
    assert np.isfinite(loss)
    assert set(grads) == set(model.params), f"gradients for {sorted(grads)}, params {sorted(model.params)}"
    worst = []
    for name, p in model.params.items():
        g = grads[name]
        assert g.shape == p.shape and g.dtype == np.float64, name
        for idx in entries(p.shape, rng):
            old = p[idx]
            p[idx] = old + EPS
            lp, _ = model.loss_and_grad(**feed)
            p[idx] = old - EPS
            lm, _ = model.loss_and_grad(**feed)
            p[idx] = old
            fd = (lp - lm) / (2 * EPS)
            err = rel_err(fd, float(g[idx]))
            worst.append((err, name, idx, fd, float(g[idx])))
    # the model is unchanged by the probing
    loss2, grads2 = model.loss_and_grad(**feed)
    assert loss2 == loss
    bad = [w for w in worst if w[0] > RTOL]
    assert not bad, "gradient mismatch (rel err, param, index, finite difference, autodiff):\n" + \
        "\n".join(f"  {e:.3g} {n}{list(i)} fd={a:.10g} ad={b:.10g}" for e, n, i, a, b in sorted(bad)[-10:])
    # the check is not vacuous: some gradient is clearly non-zero
    assert max(abs(w[3]) for w in worst) > 1e-3
    return model, loss, grads


def images(rng, batch, shape):
    return rng.normal(size=(batch,) + tuple(shape))


def classes(rng, batch, k):
    return rng.integers(0, k, size=batch)


# ----------------------------------------------------------------------------- the ops

def test_conv_strided_padded_grouped():
    src = """
    network t {
        input x: [4, 7, 6]
        label y: 3
        c = conv(x, filters=6, kernel=3, stride=2, pad=1, groups=2)
        logits = dense(c, 3)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(1)
    m, _, g = fd_check(src, 3, {"x": images(rng, 3, (4, 7, 6)), "y": classes(rng, 3, 3)})
    assert g["c.weight"].shape == (6, 2, 3, 3)


def test_conv_stride2_no_pad_leaves_rows_unread():
    # (7 - 3) / 2 + 1 = 3 rows: the last input row is never read; every weight still gets a gradient
    src = """
    network t {
        input x: [2, 8, 7]
        label y: 4
        c = conv(x, filters=3, kernel=3, stride=2) |> tanh
        logits = dense(c, 4)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(2)
    fd_check(src, 2, {"x": images(rng, 2, (2, 8, 7)), "y": classes(rng, 2, 4)})


def test_dense():
    src = """
    network t {
        input x: [6]
        label y: 4
        h = dense(x, 5)
        logits = dense(h, 4)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(3)
    fd_check(src, 4, {"x": images(rng, 4, (6,)), "y": classes(rng, 4, 4)})


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_elementwise(act):
    src = f"""
    network t {{
        input x: [5]
        label y: 3
        h = dense(x, 6) |> {act}
        logits = dense(h, 3)
        loss softmax_cross_entropy(logits, y)
    }}"""
    rng = np.random.default_rng(4)
    fd_check(src, 4, {"x": images(rng, 4, (5,)), "y": classes(rng, 4, 3)})


@pytest.mark.parametrize("pool,pad", [("maxpool", 0), ("maxpool", 1), ("avgpool", 1), ("avgpool", 0)])
def test_pools_overlapping(pool, pad):
    # size 3, stride 2: windows overlap; with pad 1 the border windows have 4 or 6 real elements
    src = f"""
    network t {{
        input x: [2, 9, 8]
        label y: 3
        c = conv(x, filters=3, kernel=2) |> {pool}(3, stride=2, pad={pad})
        logits = dense(c, 3)
        loss softmax_cross_entropy(logits, y)
    }}"""
    rng = np.random.default_rng(5 + pad)
    fd_check(src, 2, {"x": images(rng, 2, (2, 9, 8)), "y": classes(rng, 2, 3)})


def test_flatten():
    src = """
    network t {
        input x: [2, 3, 4]
        label y: 3
        c = conv(x, filters=2, kernel=2) |> flatten
        logits = dense(c, 3)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(7)
    fd_check(src, 3, {"x": images(rng, 3, (2, 3, 4)), "y": classes(rng, 3, 3)})


def test_softmax_and_mse():
    src = """
    network t {
        input x: [4]
        label t: [5]
        p = dense(x, 5) |> softmax
        loss mse(p, t)
    }"""
    rng = np.random.default_rng(8)
    t = rng.dirichlet(np.ones(5), size=3)
    fd_check(src, 3, {"x": images(rng, 3, (4,)) * 2, "t": t})


def test_softmax_then_dense():
    src = """
    network t {
        input x: [4]
        label y: 3
        p = dense(x, 5) |> softmax
        logits = dense(p, 3)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(9)
    fd_check(src, 3, {"x": images(rng, 3, (4,)) * 2, "y": classes(rng, 3, 3)})


def test_mse_real_valued_target():
    src = """
    network t {
        input x: [3]
        label t: [4]
        h = dense(x, 6) |> tanh
        out = dense(h, 4)
        loss mse(out, t)
    }"""
    rng = np.random.default_rng(10)
    fd_check(src, 5, {"x": images(rng, 5, (3,)), "t": rng.normal(size=(5, 4))})


def test_add():
    src = """
    network t {
        input x: [4]
        label y: 3
        a = dense(x, 5)
        b = dense(x, 5) |> tanh
        s = add(a, b)
        logits = dense(s, 3)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(11)
    fd_check(src, 3, {"x": images(rng, 3, (4,)), "y": classes(rng, 3, 3)})


def test_add_same_tensor_twice():
    # both operands are one tensor: its adjoint gets two contributions
    src = """
    network t {
        input x: [4]
        label y: 3
        a = dense(x, 5) |> tanh
        s = add(a, a)
        logits = dense(s, 3)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(12)
    fd_check(src, 3, {"x": images(rng, 3, (4,)), "y": classes(rng, 3, 3)})


def test_concat():
    src = """
    network t {
        input x: [2, 5, 4]
        label y: 3
        a = conv(x, filters=2, kernel=3, pad=1)
        b = conv(x, filters=3, kernel=1) |> sigmoid
        c = concat(a, b) |> tanh
        logits = dense(c, 3)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(13)
    fd_check(src, 2, {"x": images(rng, 2, (2, 5, 4)), "y": classes(rng, 2, 3)})


def test_softmax_cross_entropy():
    src = """
    network t {
        input x: [6]
        label y: 5
        logits = dense(x, 5)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(14)
    x, y = images(rng, 6, (6,)) * 3, classes(rng, 6, 5)
    m, loss, g = fd_check(src, 6, {"x": x, "y": y})
    # and the value itself: mean over the batch of logsumexp - the label's logit
    z = x @ m.params["logits.weight"].T + m.params["logits.bias"]
    zmax = z.max(axis=1, keepdims=True)
    lse = (zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True)))[:, 0]
    expect = float(np.mean(lse - z[np.arange(6), y]))
    assert abs(loss - expect) <= 1e-12 * max(1.0, abs(expect))
    # and the analytic gradient: (softmax - onehot) / n
    p = np.exp(z - lse[:, None])
    p[np.arange(6), y] -= 1
    np.testing.assert_allclose(g["logits.weight"], p.T @ x / 6, rtol=1e-10, atol=1e-12)


def test_dropout_in_training():
    src = """
    network t {
        input x: [6]
        label y: 3
        h = dense(x, 8) |> tanh |> dropout(rate=0.4)
        logits = dense(h, 3)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(15)
    feed = {"x": images(rng, 4, (6,)), "y": classes(rng, 4, 3)}
    m, loss, g = fd_check(src, 4, feed)
    # the mask changes with the step counter
    m.steps += 1
    loss_next, _ = m.loss_and_grad(**feed)
    m.steps -= 1
    assert loss_next != loss
    fd_check(src, 4, feed, model=m)  # and is consistent under the new mask too
    # a network without dropout computes a different loss on the same parameters
    plain = dnnc.load(src.replace("|> dropout(rate=0.4)", "")).compile(batch=4, dtype="f64")
    plain.params.update_from(dict(m.params))
    assert plain.loss_and_grad(**feed)[0] != loss


def test_batchnorm_training():
    src = """
    network t {
        input x: [2, 4, 5]
        label y: 3
        c = conv(x, filters=3, kernel=2) |> batchnorm |> relu
        logits = dense(c, 3)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(16)
    x = images(rng, 4, (2, 4, 5)) * 2 + 1
    m, _, g = fd_check(src, 4, {"x": x, "y": classes(rng, 4, 3)})
    assert {"c.batchnorm.weight", "c.batchnorm.bias", "c.conv.bias"} <= set(g)
    # batch statistics: the conv bias is cancelled by the mean subtraction, so its gradient is ~0
    assert np.all(np.abs(g["c.conv.bias"]) < 1e-9)
    assert np.all(np.abs(g["c.batchnorm.bias"]) > 1e-6)


def test_user_op_with_parameters_and_select():
    src = """
    op scaled_leaky(x[n, c, h, w]) -> y[n, c, h, w]
    {
        param scale[c] = 1
        param slope[c] = 0.1
        y[n, k, i, j] = select(x[n, k, i, j] > 0.0, scale[k] * x[n, k, i, j],
                               slope[k] * scale[k] * x[n, k, i, j])
    }
    network t {
        input x: [2, 4, 3]
        label y: 3
        c = conv(x, filters=3, kernel=2) |> scaled_leaky
        logits = dense(c, 3)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(17)
    m, _, g = fd_check(src, 3, {"x": images(rng, 3, (2, 4, 3)), "y": classes(rng, 3, 3)})
    assert g["c.scaled_leaky.scale"].shape == (3,) and g["c.scaled_leaky.slope"].shape == (3,)


def test_user_op_with_reduction_inside_nonlinearity():
    # custom_op.net's channel gate: a mean inside a sigmoid, times the input
    src = """
    op channel_gate(x[n, c, h, w]) -> y[n, c, h, w]
    {
        param scale[c] = 1
        param shift[c] = 0
        avg[n, k] = mean(i < h, j < w) x[n, k, i, j]
        y[n, k, i, j] = x[n, k, i, j] * sigmoid(avg[n, k] * scale[k] + shift[k])
    }
    network t {
        input x: [1, 5, 4]
        label y: 3
        c = conv(x, filters=2, kernel=3, pad=1) |> channel_gate
        logits = dense(c, 3)
        loss softmax_cross_entropy(logits, y)
    }"""
    rng = np.random.default_rng(18)
    fd_check(src, 2, {"x": images(rng, 2, (1, 5, 4)), "y": classes(rng, 2, 3)})


# ----------------------------------------------------------------------------- max on ties

TIE_OP = """
op position_scale(x[n, c, h, w]) -> y[n, c, h, w]
{
    param s[c, h, w] = 1
    y[n, k, i, j] = s[k, i, j] * x[n, k, i, j]
}
"""


def pool_ties_by_hand(x, g, size, stride, pad):
    """d loss / d s for y = maxpool(s * x) at s = 1, the gradient routed to the first maximum in
    window order (rows, then columns) of each window, padding ignored."""
    n, c, h, w = x.shape
    oh = (h + 2 * pad - size) // stride + 1
    ow = (w + 2 * pad - size) // stride + 1
    ds = np.zeros((c, h, w))
    for b in range(n):
        for k in range(c):
            for i in range(oh):
                for j in range(ow):
                    best = None
                    for p in range(size):
                        for q in range(size):
                            r, s = i * stride + p - pad, j * stride + q - pad
                            if 0 <= r < h and 0 <= s < w and (best is None or x[b, k, r, s] > x[b, k, best[0], best[1]]):
                                best = (r, s)
                    ds[k, best[0], best[1]] += g[b, k, i, j] * x[b, k, best[0], best[1]]
    return ds


@pytest.mark.parametrize("size,stride,pad", [(2, 2, 0), (3, 2, 0), (3, 2, 1)])
def test_max_ties_go_to_first_maximum(size, stride, pad):
    src = TIE_OP + f"""
    network t {{
        input x: [2, 5, 6]
        label t: [{2 * ((5 + 2 * pad - size) // stride + 1) * ((6 + 2 * pad - size) // stride + 1)}]
        p = position_scale(x) |> maxpool({size}, stride={stride}, pad={pad}) |> flatten
        loss mse(p, t)
    }}"""
    m = dnnc.load(src).compile(batch=2, dtype="f64")
    rng = np.random.default_rng(19)
    # small integers: every window holds exact ties
    x = rng.integers(-1, 3, size=(2, 2, 5, 6)).astype(np.float64)
    x[:, 0] = 2.0  # a whole channel of one value: each window's first element wins
    oh = (5 + 2 * pad - size) // stride + 1
    ow = (6 + 2 * pad - size) // stride + 1
    t = rng.normal(size=(2, 2 * oh * ow))
    loss, g = m.loss_and_grad(x=x, t=t)
    # forward: the pooled values by hand
    y = np.full((2, 2, oh, ow), -np.inf)
    for i in range(oh):
        for j in range(ow):
            for p in range(size):
                for q in range(size):
                    r, s = i * stride + p - pad, j * stride + q - pad
                    if 0 <= r < 5 and 0 <= s < 6:
                        y[:, :, i, j] = np.maximum(y[:, :, i, j], x[:, :, r, s])
    diff = y.reshape(2, -1) - t
    assert abs(loss - float(np.mean(diff ** 2))) < 1e-12
    gy = (2 * diff / diff.size).reshape(y.shape)
    expect = pool_ties_by_hand(x, gy, size, stride, pad)
    np.testing.assert_allclose(g["p.s"], expect, rtol=1e-12, atol=1e-14)
    # in the constant channel only the first element of each window (clipped to the image) is hit
    hit = np.argwhere(g["p.s"][0] != 0)
    firsts = {(max(i * stride - pad, 0), max(j * stride - pad, 0)) for i in range(oh) for j in range(ow)}
    assert {tuple(h) for h in hit} <= firsts and len(hit) > 0


# ----------------------------------------------------------------------------- against PyTorch

def torch_net(name, params):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    P = {k: torch.tensor(np.asarray(v, np.float32), requires_grad=True) for k, v in params.items()}

    if name == "lenet5":
        def f(x):
            h = F.max_pool2d(F.relu(F.conv2d(x, P["c1.weight"], P["c1.bias"], padding=2)), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, P["c2.weight"], P["c2.bias"])), 2)
            h = torch.flatten(h, 1)
            h = F.relu(F.linear(h, P["f3.weight"], P["f3.bias"]))
            h = F.relu(F.linear(h, P["f4.weight"], P["f4.bias"]))
            return F.linear(h, P["logits.weight"], P["logits.bias"])
    else:
        def f(x):
            h = torch.flatten(x, 1)
            h = F.relu(F.linear(h, P["h1.weight"], P["h1.bias"]))
            h = F.relu(F.linear(h, P["h2.weight"], P["h2.bias"]))
            return F.linear(h, P["logits.weight"], P["logits.bias"])
    return torch, f, P


@pytest.mark.parametrize("name", ["lenet5", "lenet300"])
def test_whole_network_gradients_match_pytorch(name):
    pytest.importorskip("torch")
    net = dnnc.load(ROOT / "examples" / f"{name}.net")
    B = 8
    model = net.compile(batch=B, seed=3)
    rng = np.random.default_rng(20)
    digits = datamod.embedded()
    x = ((digits.x_test[:B] - 0.13) / 0.31).reshape(B, 1, 28, 28).astype(np.float32)
    y = digits.y_test[:B]
    # biases off zero so their gradients and the relus' patterns are not special
    for k, p in model.params.items():
        if k.endswith("bias"):
            p[...] = 0.05 * rng.normal(size=p.shape)
    loss, grads = model.loss_and_grad(image=x, digit=y)

    torch, f, P = torch_net(name, {k: v for k, v in model.params.items()})
    xt = torch.tensor(x)
    out = f(xt)
    tl = torch.nn.functional.cross_entropy(out, torch.tensor(y, dtype=torch.long))
    tl.backward()
    assert abs(loss - tl.item()) <= 1e-4 * abs(tl.item())
    assert set(grads) == set(P)
    for k, p in P.items():
        ref = p.grad.numpy().astype(np.float64)
        got = grads[k].astype(np.float64)
        assert got.shape == ref.shape, k
        scale = float(np.abs(ref).max())
        assert scale > 0, k
        err = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-2 * scale)
        assert err.max() <= 1e-4, f"{k}: max rel err {err.max():.3g}"
        # and as a whole tensor
        assert np.linalg.norm(got - ref) <= 1e-4 * np.linalg.norm(ref), k


def test_the_count_of_an_unpadded_mean_is_a_constant():
    """The gradient of batchnorm's mean over (b, i, j) divides by n*h*w, a constant: it used to
    recount the domain in a loop inside every element's loop (1,495 ms a step at batch 16 for
    a small residual CNN, 0.68 ms at batch 8, where LLVM happened to fold the loop). A padded
    pool's window size is a closed form of the output position, not a loop either."""
    from dnnc.te.expr import Reduce
    from dnnc.driver.programs import training_groups

    src = """
    network bn {
        input image: [3, 8, 8]
        label digit: 10
        a = conv(image, filters=8, kernel=3, pad=1, bias=false) |> batchnorm |> relu
        p = avgpool(a, 3, stride=2, pad=1)
        logits = dense(p, 10)
        loss softmax_cross_entropy(logits, digit)
    }
    """
    g = dnnc.load(src).at_batch(16, training=True)
    groups = training_groups(g).groups
    counted = {st.tensor for _, stmts in groups for st in stmts
               if any(isinstance(x, Reduce) and x.op == "count" for x in st.value.walk())}
    assert counted == set()
    pool_grad = next(st for _, stmts in groups for st in stmts if st.tensor == "a.grad")
    assert "/ (max(0, 3 - max(0, " in pool_grad.show()  # the window clipped at the image's edge
