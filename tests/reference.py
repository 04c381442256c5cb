"""Independent numpy implementations of dnnc's built-in ops (no dnnc imports).

Semantics follow PyTorch / ONNX. Everything is computed in float64: inputs are converted
with np.asarray(..., np.float64) first, so float32 arrays fed to the compiled code can be
passed in unchanged and the reference sees exactly the same values.

    conv2d      NCHW, weight [out, in/groups, k, k], zero padding, stride, groups
    dense       weight [out, in], x [N, in] (a 4-D x is flattened first, as dnnc does)
    maxpool     padding never wins (padded with -inf)
    avgpool     divides by the number of real (non-padding) elements: count_include_pad=False
    flatten     row-major over C, H, W
    softmax     over the last axis
    concat      on the channel axis (axis 1)
    batchnorm   BatchNorm2d (batch statistics in training, running statistics in inference);
                batchnorm_update: the running statistics after a training step
    layernorm   LayerNorm over the last axis
    global_avgpool  the mean over H and W, kept as [N, C, 1, 1]
    relu6, clip, leaky_relu
    dropout     inference only (the identity)
    losses      softmax_cross_entropy (mean over the batch), mse (mean over all elements)
"""
from __future__ import annotations

import numpy as np


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def out_size(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1


def _windows(xp: np.ndarray, k: int, stride: int, oh: int, ow: int) -> np.ndarray:
    """xp [N, C, Hp, Wp] -> [N, C, oh, ow, k, k]: the k x k window of every output position."""
    n, c = xp.shape[:2]
    out = np.empty((n, c, oh, ow, k, k), dtype=xp.dtype)
    for r in range(k):
        for s in range(k):
            out[..., r, s] = xp[:, :, r: r + stride * (oh - 1) + 1: stride, s: s + stride * (ow - 1) + 1: stride]
    return out


def _pad(x: np.ndarray, pad: int, value: float) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=value)


def conv2d(x, weight, bias=None, stride: int = 1, pad: int = 0, groups: int = 1) -> np.ndarray:
    x, weight = f64(x), f64(weight)
    n, c, h, w = x.shape
    f, cg, k, k2 = weight.shape
    assert k == k2 and c % groups == 0 and f % groups == 0 and cg == c // groups
    oh, ow = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    win = _windows(_pad(x, pad, 0.0), k, stride, oh, ow)  # [N, C, oh, ow, k, k]
    fg = f // groups
    y = np.empty((n, f, oh, ow))
    for g in range(groups):
        xs = win[:, g * cg:(g + 1) * cg]  # [N, cg, oh, ow, k, k]
        ws = weight[g * fg:(g + 1) * fg]  # [fg, cg, k, k]
        y[:, g * fg:(g + 1) * fg] = np.einsum("ncijrs,fcrs->nfij", xs, ws)
    if bias is not None:
        y += f64(bias)[None, :, None, None]
    return y


def flatten(x) -> np.ndarray:
    x = f64(x)
    return x.reshape(x.shape[0], -1)


def dense(x, weight, bias=None) -> np.ndarray:
    x = f64(x)
    if x.ndim > 2:
        x = flatten(x)
    y = x @ f64(weight).T
    if bias is not None:
        y = y + f64(bias)[None, :]
    return y


def relu(x) -> np.ndarray:
    return np.maximum(f64(x), 0.0)


def sigmoid(x) -> np.ndarray:
    x = f64(x)
    # the two-sided form never overflows
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def tanh(x) -> np.ndarray:
    return np.tanh(f64(x))


def relu6(x) -> np.ndarray:
    return np.minimum(np.maximum(f64(x), 0.0), 6.0)


def clip(x, lo: float = 0.0, hi: float = 6.0) -> np.ndarray:
    return np.minimum(np.maximum(f64(x), lo), hi)


def leaky_relu(x, slope: float = 0.01) -> np.ndarray:
    x = f64(x)
    return np.where(x > 0, x, slope * x)


def global_avgpool(x) -> np.ndarray:
    return f64(x).mean(axis=(2, 3), keepdims=True)


def maxpool(x, size: int, stride: int | None = None, pad: int = 0) -> np.ndarray:
    x = f64(x)
    stride = size if stride is None else stride
    oh, ow = out_size(x.shape[2], size, stride, pad), out_size(x.shape[3], size, stride, pad)
    win = _windows(_pad(x, pad, -np.inf), size, stride, oh, ow)
    return win.max(axis=(4, 5))


def avgpool(x, size: int, stride: int | None = None, pad: int = 0) -> np.ndarray:
    x = f64(x)
    stride = size if stride is None else stride
    oh, ow = out_size(x.shape[2], size, stride, pad), out_size(x.shape[3], size, stride, pad)
    total = _windows(_pad(x, pad, 0.0), size, stride, oh, ow).sum(axis=(4, 5))
    ones = np.ones((1, 1) + x.shape[2:])
    count = _windows(_pad(ones, pad, 0.0), size, stride, oh, ow).sum(axis=(4, 5))
    return total / count


def softmax(x) -> np.ndarray:
    x = f64(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def add(a, b) -> np.ndarray:
    return f64(a) + f64(b)


def concat(a, b) -> np.ndarray:
    return np.concatenate([f64(a), f64(b)], axis=1)


def log_softmax(x) -> np.ndarray:
    x = f64(x)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits, labels) -> float:
    """Mean over the batch of -log softmax(logits)[label]; labels are class ids (any dtype)."""
    lp = log_softmax(logits)
    idx = np.asarray(labels).astype(np.int64)
    assert np.array_equal(idx, np.asarray(labels)), "labels must hold whole class numbers"
    return float(-lp[np.arange(lp.shape[0]), idx].mean())


def mse(x, target) -> float:
    d = f64(x) - f64(target)
    return float((d * d).mean())


def batchnorm(x, weight, bias, running_mean=None, running_var=None, eps: float = 1e-5,
              training: bool = False) -> np.ndarray:
    """BatchNorm2d: per channel, batch statistics (biased variance) in training, else the running ones."""
    x = f64(x)
    if training:
        mu, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    else:
        mu, var = f64(running_mean), f64(running_var)
    c = (slice(None), None, None)
    return (x - mu[c]) / np.sqrt(var + eps)[c] * f64(weight)[c] + f64(bias)[c]


def batchnorm_update(x, running_mean, running_var, momentum: float = 0.1):
    """The running statistics after one training step (PyTorch's rule: the running variance
    takes the unbiased batch variance)."""
    x = f64(x)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mu, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    return ((1 - momentum) * f64(running_mean) + momentum * mu,
            (1 - momentum) * f64(running_var) + momentum * var * m / max(m - 1, 1))


def layernorm(x, weight, bias, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm over the last axis (biased variance)."""
    x = f64(x)
    y = (x - x.mean(axis=-1, keepdims=True)) / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    return y * f64(weight) + f64(bias)


def dropout(x, rate: float = 0.5, training: bool = False) -> np.ndarray:
    """Inverted dropout; in inference the identity (training is random: not modelled here)."""
    assert not training, "dropout in training draws random numbers; compare statistics instead"
    return f64(x)


# ----------------------------------------------------------------------------- self-checks
# Small hand-computed cases, so a mistake in the reference itself cannot hide behind an
# equal mistake in the compiler. Run by tests/test_ops.py.

def self_check() -> None:
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    # conv: 2x2 all-ones filter, stride 2 -> sums of 2x2 blocks
    y = conv2d(x, np.ones((1, 1, 2, 2)), None, stride=2)
    assert np.array_equal(y[0, 0], [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])
    # conv with pad 1: the corner sees only x[0,0], x[0,1], x[1,0], x[1,1]
    y = conv2d(x, np.ones((1, 1, 3, 3)), np.array([0.5]), pad=1)
    assert y.shape == (1, 1, 4, 4) and y[0, 0, 0, 0] == 0 + 1 + 4 + 5 + 0.5
    # groups: channel g only sees input channel g
    x2 = np.stack([np.ones((3, 3)), 2 * np.ones((3, 3))])[None]
    y = conv2d(x2, np.ones((2, 1, 3, 3)), None, groups=2)
    assert np.array_equal(y.ravel(), [9.0, 18.0])
    # maxpool with padding on all-negative input: padding never wins
    neg = -1.0 - x
    y = maxpool(neg, 3, stride=2, pad=1)
    assert y[0, 0, 0, 0] == -1.0
    # avgpool with pad 1, size 3: the corner averages 4 real elements
    y = avgpool(x, 3, stride=1, pad=1)
    assert y[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4 and y[0, 0, 1, 1] == (0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10) / 9
    # flatten is row-major over C, H, W
    z = np.arange(24.0).reshape(1, 2, 3, 4)
    assert np.array_equal(flatten(z)[0], np.arange(24.0))
    # softmax of equal values is uniform; cross entropy of uniform logits is log(k)
    assert np.allclose(softmax(np.zeros((2, 5))), 0.2)
    assert np.isclose(softmax_cross_entropy(np.zeros((3, 5)), [0, 1, 4]), np.log(5))
    assert np.isclose(softmax_cross_entropy(np.array([[0.0, np.log(3.0)]]), [1]), -np.log(0.75))
    assert mse(np.ones((2, 2)), np.zeros((2, 2))) == 1.0 and mse([[1.0, 3.0]], [[0.0, 0.0]]) == 5.0
    assert np.isclose(sigmoid(np.array([0.0, -1000.0, 1000.0])), [0.5, 0.0, 1.0]).all()
    # batchnorm in training normalizes each channel to mean 0, variance 1 (then weight, bias)
    xb = np.random.default_rng(1).normal(3.0, 2.0, size=(4, 2, 3, 5))
    yb = batchnorm(xb, np.ones(2), np.zeros(2), eps=0.0, training=True)
    assert np.allclose(yb.mean(axis=(0, 2, 3)), 0.0) and np.allclose(yb.var(axis=(0, 2, 3)), 1.0)
    yb = batchnorm(xb, np.array([2.0, 1.0]), np.array([0.0, 5.0]), np.array([1.0, 0.0]), np.array([4.0, 1.0]), eps=0.0)
    assert np.allclose(yb[:, 0], (xb[:, 0] - 1.0) / 2.0 * 2.0) and np.allclose(yb[:, 1], xb[:, 1] + 5.0)
    # the new activations at hand-picked points, their kinks included
    v = np.array([-7.0, -1.0, 0.0, 0.5, 6.0, 9.0])
    assert np.array_equal(relu6(v), [0, 0, 0, 0.5, 6, 6])
    assert np.array_equal(clip(v, -1.0, 0.5), [-1, -1, 0, 0.5, 0.5, 0.5])
    assert np.array_equal(leaky_relu(v, 0.5), [-3.5, -0.5, 0, 0.5, 6, 9])
    assert np.array_equal(global_avgpool(x), [[[[7.5]]]])
    # layernorm: each row to mean 0, variance 1, then scaled per feature
    ln = layernorm(np.array([[1.0, 3.0], [0.0, -4.0]]), np.array([1.0, 2.0]), np.array([0.0, 1.0]), eps=0.0)
    assert np.allclose(ln, [[-1.0, 3.0], [1.0, -1.0]])
    # running statistics: (1 - m) old + m batch, the variance unbiased (4 values: x 4/3)
    rm, rv = batchnorm_update(np.array([1.0, 3.0, 5.0, 7.0]).reshape(2, 1, 2, 1), [0.0], [1.0], 0.5)
    assert np.allclose(rm, [2.0]) and np.allclose(rv, [0.5 + 0.5 * 5.0 * 4 / 3])
    # the vectorized conv agrees with the definition written as plain loops
    rng = np.random.default_rng(0)
    xr, wr, br = rng.normal(size=(2, 4, 6, 5)), rng.normal(size=(6, 2, 3, 3)), rng.normal(size=6)
    assert np.allclose(conv2d(xr, wr, br, stride=2, pad=1, groups=2), _conv2d_loops(xr, wr, br, 2, 1, 2))
    assert np.array_equal(dense(np.array([[1.0, 2.0]]), np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]]),
                                np.array([0.0, 1.0, 0.0])), [[1.0, 4.0, -2.0]])


def _conv2d_loops(x, weight, bias, stride, pad, groups):
    n, c, h, w = x.shape
    f, cg, k, _ = weight.shape
    oh, ow = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    y = np.zeros((n, f, oh, ow))
    for b in range(n):
        for o in range(f):
            g = o // (f // groups)
            for i in range(oh):
                for j in range(ow):
                    acc = bias[o]
                    for ci in range(cg):
                        for r in range(k):
                            for s in range(k):
                                hh, ww = i * stride + r - pad, j * stride + s - pad
                                if 0 <= hh < h and 0 <= ww < w:
                                    acc += x[b, g * cg + ci, hh, ww] * weight[o, ci, r, s]
                    y[b, o, i, j] = acc
    return y
