"""The example networks in examples/, compiled at batch 3 and run with random inputs and seeded
parameters, against the same networks composed from the numpy reference ops.

vgg16 and alexnet are too big to run in a test: they are loaded at batch 1 and their shapes
and parameter counts checked against the published architectures.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (ROOT, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import dnnc  # noqa: E402
import reference as ref  # noqa: E402
from dnnc.driver.programs import lower_graph  # noqa: E402
from dnnc.driver import compile as driver  # noqa: E402
from dnnc.target import CPU  # noqa: E402

EXAMPLES = ROOT / "examples"
BATCH = 3


def assert_close(actual, expected, what=""):
    expected = np.asarray(expected, np.float64)
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


# ----------------------------------------------------------------------------- numpy versions

def lenet5(x, p):
    c1 = ref.maxpool(ref.relu(ref.conv2d(x, p["c1.weight"], p["c1.bias"], pad=2)), 2)
    c2 = ref.maxpool(ref.relu(ref.conv2d(c1, p["c2.weight"], p["c2.bias"])), 2)
    f3 = ref.relu(ref.dense(ref.flatten(c2), p["f3.weight"], p["f3.bias"]))
    f4 = ref.relu(ref.dense(f3, p["f4.weight"], p["f4.bias"]))
    return {"logits": ref.dense(f4, p["logits.weight"], p["logits.bias"])}


def lenet300(x, p):
    h1 = ref.relu(ref.dense(ref.flatten(x), p["h1.weight"], p["h1.bias"]))
    h2 = ref.relu(ref.dense(h1, p["h2.weight"], p["h2.bias"]))
    return {"logits": ref.dense(h2, p["logits.weight"], p["logits.bias"])}


BLUR = np.array([[0.075, 0.124, 0.075],
                 [0.124, 0.204, 0.124],
                 [0.075, 0.124, 0.075]])
SOBEL = np.array([[[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]],
                  [[[-1, -2, -1], [0, 0, 0], [1, 2, 1]]]], dtype=np.float64)


def blur(x, p):
    return {"blurred": ref.conv2d(x, BLUR[None, None], np.zeros(1), pad=1)}


def sobel(x, p):
    g = ref.conv2d(x, SOBEL, np.zeros(2), pad=1)
    return {"gradients": g, "edges": np.sqrt(g[:, :1] ** 2 + g[:, 1:2] ** 2)}


# custom_op.net's user ops, written by hand
def swish(x, beta=1.0):
    x = ref.f64(x)
    return x * ref.sigmoid(beta * x)


def channel_gate(x, scale, shift):
    x = ref.f64(x)
    avg = x.mean(axis=(2, 3))  # [n, c]
    gate = ref.sigmoid(avg * ref.f64(scale)[None] + ref.f64(shift)[None])
    return x * gate[:, :, None, None]


def gated(x, p):
    c1 = ref.conv2d(x, p["c1.conv.weight"], p["c1.conv.bias"], pad=1)
    c1 = ref.maxpool(channel_gate(swish(c1, 2.0), p["c1.channel_gate.scale"], p["c1.channel_gate.shift"]), 2)
    c2 = ref.avgpool(swish(ref.conv2d(c1, p["c2.weight"], p["c2.bias"], stride=2)), 2, pad=1)
    return {"logits": ref.dense(ref.flatten(c2), p["logits.weight"], p["logits.bias"])}


RUNNABLE = {  # file -> (numpy version, input name, whether the params are the file's fixed weights)
    "lenet5": (lenet5, "image", False),
    "lenet300": (lenet300, "image", False),
    "blur": (blur, "img", True),
    "sobel": (sobel, "img", True),
    "custom_op": (gated, "image", False),
}


def seeded_params(net, seed):
    """He-scaled normal weights and small nonzero biases/offsets, from one seeded generator."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in net.params.items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        s = math.sqrt(2.0 / fan_in) if len(shape) > 1 else 0.3
        out[name] = (rng.normal(size=shape) * s).astype(np.float32)
    return out


class Example:
    def __init__(self, name):
        self.name = name
        self.numpy_fn, self.input, self.fixed = RUNNABLE[name]
        self.net = dnnc.load(EXAMPLES / f"{name}.net")
        self.model = self.net.compile(batch=BATCH)
        seed = sorted(RUNNABLE).index(name)
        if self.fixed:
            self.params = {k: np.array(v) for k, v in self.model.params.items()}
        else:
            self.params = seeded_params(self.net, seed)
            for k, v in self.params.items():
                self.model.params[k] = v
        rng = np.random.default_rng(100 + seed)
        self.x = rng.random((BATCH,) + self.net.inputs[self.input]).astype(np.float32)


_examples: dict[str, Example] = {}


def get_example(name) -> Example:
    """Each example compiled once per test session."""
    if name not in _examples:
        _examples[name] = Example(name)
    return _examples[name]


@pytest.fixture(scope="module", params=sorted(RUNNABLE))
def example(request):
    return get_example(request.param)


def test_example_matches_numpy(example):
    out = example.model.forward(**{example.input: example.x})
    want = example.numpy_fn(example.x, example.params)
    assert set(out) == set(want)
    for name, w in want.items():
        assert out[name].shape == (BATCH,) + example.net.outputs[name]
        assert np.isfinite(out[name]).all()
        assert np.abs(w).max() > 1e-3, "a test on all-zero outputs would prove little"
        assert_close(out[name], w, f"{example.name}: {name}")


def test_example_examples_are_independent(example):
    """Each example of a batch gives the result it gives alone (no mixing across the batch)."""
    x = example.x
    alone = example.model.forward(**{example.input: x[1:2]})
    together = example.model.forward(**{example.input: x})
    for name in alone:
        assert_close(together[name][1:2], alone[name], f"{example.name}: {name}")


def test_fixed_weights_are_the_files():
    blur_net = dnnc.load(EXAMPLES / "blur.net").compile(batch=1)
    np.testing.assert_array_equal(blur_net.params["blurred.weight"], BLUR[None, None].astype(np.float32))
    np.testing.assert_array_equal(blur_net.params["blurred.bias"], [0.0])
    sobel_net = dnnc.load(EXAMPLES / "sobel.net").compile(batch=1)
    np.testing.assert_array_equal(sobel_net.params["gradients.weight"], SOBEL.astype(np.float32))
    np.testing.assert_array_equal(sobel_net.params["gradients.bias"], [0.0, 0.0])


def test_blur_of_constant_image():
    """Inside, the blur of a constant image is the constant times the filter's sum; the corners
    see only 4 of the 9 taps (zero padding)."""
    m = dnnc.load(EXAMPLES / "blur.net").compile(batch=1)
    y = m.forward(img=np.ones((1, 64, 64), np.float32))["blurred"][0, 0]
    assert_close(y[1:-1, 1:-1], np.full((62, 62), BLUR.sum()))
    assert_close(y[0, 0], BLUR[1:, 1:].sum())


def test_lenet5_on_real_digits_in_chunks():
    """The eight MNIST digits of examples/digits.npy, at batch 3: chunks of 3, 3 and 2."""
    digits = np.load(EXAMPLES / "digits.npy")
    ex = get_example("lenet5")
    x = digits.reshape((-1,) + ex.net.inputs["image"]).astype(np.float32)
    assert x.shape[0] == 8
    out = ex.model.forward(image=x)["logits"]
    assert_close(out, lenet5(x, ex.params)["logits"], "lenet5 on digits")


# ----------------------------------------------------------------------------- losses (JIT)

def jit_with_loss(graph):
    """The forward pass with its loss, compiled as api.Model compiles its own programs."""
    arrays: dict[str, np.ndarray] = {}
    ex = driver.Built(driver.from_program(lower_graph(graph, with_loss=True), CPU), arrays)

    def run(values):
        for k, v in values.items():
            if k in arrays:
                arrays[k][...] = v
        ex.run()
        return arrays

    run.executable = ex
    return run


@pytest.mark.parametrize("name", ["lenet5", "lenet300", "custom_op"])
def test_example_loss(name):
    ex = get_example(name)
    g = ex.net.at_batch(BATCH)
    label = g.labels[0]
    labels = np.array([0, g.classes[label] - 1, 4], np.float32)
    run = jit_with_loss(g)
    bufs = run(dict(ex.params, **{ex.input: ex.x, label: labels}))
    logits = ex.numpy_fn(ex.x, ex.params)["logits"]
    assert_close(bufs["logits"], logits, f"{name}: logits")
    assert_close(bufs["loss"], ref.softmax_cross_entropy(logits, labels), f"{name}: loss")
    # and through the public API (Model.loss_and_grad, which also computes gradients)
    loss, _ = ex.model.loss_and_grad(**{ex.input: ex.x, label: labels})
    assert_close(loss, ref.softmax_cross_entropy(logits, labels), f"{name}: Model.loss_and_grad")


# ----------------------------------------------------------------------------- big networks: shapes only

def conv_params(cin, cout, k, groups=1):
    return cout * (cin // groups) * k * k + cout


def dense_params(nin, nout):
    return nin * nout + nout


def test_vgg16_shapes_and_params():
    net = dnnc.load(EXAMPLES / "vgg16.net")
    assert net.graph.batch == 1
    assert net.inputs == {"image": (3, 224, 224)}
    assert net.outputs == {"fc8": (1000,)}
    t = net.graph.tensors
    expected = {"conv1_2": (64, 224, 224), "pool1": (64, 112, 112), "pool2": (128, 56, 56),
                "pool3": (256, 28, 28), "conv4_3": (512, 28, 28), "pool4": (512, 14, 14),
                "pool5": (512, 7, 7), "fc6": (4096,), "fc7": (4096,), "fc8": (1000,)}
    for name, shape in expected.items():
        assert t[name].shape == (1,) + shape, name
    chans = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    total = sum(conv_params(a, b, 3) for a, b in chans)
    total += dense_params(512 * 7 * 7, 4096) + dense_params(4096, 4096) + dense_params(4096, 1000)
    assert total == 138_357_544  # the published VGG-16 count
    assert sum(math.prod(s) for s in net.params.values()) == total
    assert net.params["conv3_1.weight"] == (256, 128, 3, 3)
    assert net.params["fc6.weight"] == (4096, 25088)


def test_alexnet_shapes_and_params():
    net = dnnc.load(EXAMPLES / "alexnet.net")
    assert net.inputs == {"image": (3, 227, 227)}
    assert net.outputs == {"fc8": (1000,)}
    t = net.graph.tensors
    expected = {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27),
                "pool2": (256, 13, 13), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
                "conv5": (256, 13, 13), "pool5": (256, 6, 6), "fc6": (4096,), "fc8": (1000,)}
    for name, shape in expected.items():
        assert t[name].shape == (1,) + shape, name
    assert net.params["conv2.weight"] == (256, 48, 5, 5)  # two groups
    assert net.params["conv4.weight"] == (384, 192, 3, 3)
    total = (conv_params(3, 96, 11) + conv_params(96, 256, 5, 2) + conv_params(256, 384, 3)
             + conv_params(384, 384, 3, 2) + conv_params(384, 256, 3, 2)
             + dense_params(256 * 6 * 6, 4096) + dense_params(4096, 4096) + dense_params(4096, 1000))
    assert total == 60_965_224  # the published AlexNet count (with the two-GPU groups)
    assert sum(math.prod(s) for s in net.params.values()) == total
