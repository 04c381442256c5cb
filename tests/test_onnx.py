"""ONNX out and in: ONNX Runtime computes what dnnc computes for every example built from
dnnc's layers, an import of the export computes the same again, and what has no counterpart
is refused by name."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import dnnc  # noqa: E402
from dnnc.base.errors import DnncError  # noqa: E402
from dnnc.io.onnx_io import export, import_model, weights_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EVERY_LAYER = """network t {
    input x: [3, 12, 12]
    a = conv(x, filters=4, kernel=3, pad=1) |> batchnorm |> relu |> avgpool(3, stride=2, pad=1)
    b = conv(x, filters=2, kernel=3, stride=2, pad=1, groups=1) |> sigmoid
    c = concat(a, b) |> dropout(0.3) |> maxpool(2, pad=1)
    d = dense(c, 5) |> tanh
    e = dense(c, 5)
    y = add(d, e) |> softmax
    output y
}"""


NEW_BUILTINS = """network nb {
    input x: [3, 8, 8]
    a = conv(x, filters=4, kernel=3, pad=1, bias=false) |> batchnorm |> relu6
    b = conv(a, filters=4, kernel=3, pad=1) |> clip(lo=-0.5, hi=0.5) |> leaky_relu(0.2) |> global_avgpool
    c = dense(b, 6) |> layernorm |> dropout(0.3)
    y = dense(c, 3)
    output y
}"""


def model_of(net, seed=0):
    m = net.compile(batch=2, threads=1)
    rng = np.random.default_rng(seed)
    for k in m.states:  # running statistics away from their initial 0 and 1
        shape = m.states[k].shape
        m.states[k] = (rng.random(shape) + 0.5 if k.endswith("var") else 0.2 * rng.standard_normal(shape)).astype(
            np.float32)
    return m


def params_of(m):
    return {**{k: m.params[k] for k in m.params}, **{k: m.states[k] for k in m.states}}


@pytest.mark.parametrize("source", ["lenet5", "lenet300", "blur", "every_layer", "new_builtins", "sobel", "custom_op"])
def test_onnx_runtime_and_reimport_compute_what_dnnc_does(source, tmp_path):
    texts = {"every_layer": EVERY_LAYER, "new_builtins": NEW_BUILTINS}
    net = dnnc.load(texts[source] if source in texts else ROOT / "examples" / f"{source}.net")
    m = model_of(net)
    path = tmp_path / "m.onnx"
    export(net, params_of(m), path)
    onnx.checker.check_model(onnx.load(str(path)))
    inp = net.graph.inputs[0]
    x = np.random.default_rng(1).random((2, *net.inputs[inp]), dtype=np.float32) - 0.5  # both signs
    want = m.forward(**{inp: x})
    assert all(np.abs(want[o][0] - want[o][1]).max() > 1e-3 for o in net.graph.outputs)  # the examples differ
    got = ort.InferenceSession(str(path)).run(None, {inp: x})
    for o, g in zip(net.graph.outputs, got):
        np.testing.assert_allclose(g, want[o], rtol=1e-5, atol=1e-5, err_msg=o)
    if source in ("sobel", "custom_op"):  # user-defined ops export as ONNX primitives, not layers
        return
    text, layer_params = import_model(path)
    back = dnnc.load(text)
    m2 = back.compile(batch=2, threads=1)
    for k, v in weights_for(back, layer_params).items():
        (m2.params if k in m2.params else m2.states)[k] = v
    again = m2.forward(**{back.graph.inputs[0]: x})
    for o, o2 in zip(net.graph.outputs, back.graph.outputs):
        np.testing.assert_allclose(again[o2], want[o], rtol=1e-5, atol=1e-6, err_msg=o)


def test_user_ops_beyond_the_translation_are_refused(tmp_path):
    src = """op shift(x[n, m]) -> y[n, m] { y[n, k] = x[n, (k + 1) % m] }
network s { input x: [6]\n y = shift(x)\n output y }"""
    net = dnnc.load(src)
    with pytest.raises(DnncError, match=r"layer 'y' \(shift\): the read x\[\.\.\.\] \(an index other than"):
        export(net, {}, tmp_path / "s.onnx")


def test_an_op_without_a_dnnc_layer_is_refused_by_name(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Erf", ["x"], ["y"], "the_erf")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "e.onnx"))
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "import", str(tmp_path / "e.onnx"), "-o",
                        str(tmp_path / "e.net"), "--weights-out", str(tmp_path / "e.npz")], capture_output=True,
                       text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "node 'the_erf': ONNX op Erf has no dnnc layer" in r.stderr
    assert not (tmp_path / "e.net").exists()


def test_cli_export_then_import(tmp_path):
    cli = [sys.executable, "-m", "dnnc.cli"]
    r = subprocess.run(cli + ["export", str(ROOT / "examples" / "lenet300.net"), "-o", str(tmp_path / "m.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cli + ["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.net"), "--weights-out",
                              str(tmp_path / "w.npz")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "m.net").read_text()
    assert text.count("= dense(") == 3 and "output logits" in text
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 28, 28), np.float32))
    r = subprocess.run(cli + ["run", str(tmp_path / "m.net"), "--weights", str(tmp_path / "w.npz"), "--input",
                              str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _graph(nodes, inputs, outputs, inits=(), opset=17):
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_imported_names_are_readable_valid_and_unique(tmp_path):
    """PyTorch's scope paths without the op type, each module once; a reserved word or an op's
    name gets a trailing underscore, a leading digit the layer's name, a repeat a number."""
    from onnx import helper

    rng = np.random.default_rng(0)
    made_up = {}  # a tensor name as PyTorch makes them up, from its node's

    def node(op, ins, name, **attrs):
        made_up[name] = out = "logits" if name == "/fc/Gemm" else f"{name}_output_{len(made_up)}"
        return helper.make_node(op, [made_up.get(t, t) for t in ins], [out], name, **attrs)

    nodes = [node("Relu", ["x"], "/relu/Relu"), node("Conv", ["/relu/Relu", "w1"], "/layer1/layer1.0/conv1/Conv"),
             node("Conv", ["/layer1/layer1.0/conv1/Conv", "w2"], "/0/Conv"),
             node("Add", ["/0/Conv", "/layer1/layer1.0/conv1/Conv"], "/layer1/layer1.0/Add"),
             node("MaxPool", ["/layer1/layer1.0/Add"], "/maxpool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
             node("Add", ["/maxpool/MaxPool", "/maxpool/MaxPool"], "/layer1/layer1.0/Add_1"),
             node("Flatten", ["/layer1/layer1.0/Add_1"], "/Flatten"),
             node("Gemm", ["/Flatten", "w3"], "/fc/Gemm", transB=1)]
    inits = [("w1", rng.random((2, 1, 3, 3))), ("w2", rng.random((2, 2, 1, 1))), ("w3", rng.random((3, 2)))]
    onnx.save(_graph(nodes, [("x", ["N", 1, 4, 4])], [("logits", ["N", 3])], inits), str(tmp_path / "n.onnx"))
    text, layer_params = import_model(tmp_path / "n.onnx")
    body = text.split("{", 1)[1]
    for line in ["relu_ = relu(x)", "layer1_0_conv1 = conv(relu_, filters=2, kernel=3, bias=false)",
                 "conv_0 = conv(layer1_0_conv1, filters=2, kernel=1, bias=false)",
                 "layer1_0 = add(conv_0, layer1_0_conv1) |> maxpool(2)",
                 "layer1_0_2 = add(layer1_0, layer1_0) |> flatten",
                 "logits = dense(layer1_0_2, 3, bias=false)"]:
        assert line in body, text
    dnnc.load(text)


def test_a_graph_mixing_examples_is_imported_whole_only_with_fixed_shapes(tmp_path):
    """Flatten at axis 0 and a softmax over the first dimension mix the examples: with a fixed
    input shape the graph is one example, and every layer gets the extra leading dimension."""
    from onnx import helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "mu", "var"], ["bn"], "bn"),
             helper.make_node("MaxPool", ["bn"], ["p"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["g"], "gap"),
             helper.make_node("Softmax", ["p"], ["sm"], "softmax", axis=0),
             helper.make_node("Flatten", ["sm"], ["y"], "flat", axis=0)]
    inits = [("W", rng.standard_normal((4, 3, 3, 3))), ("B", rng.standard_normal(4)), ("s", rng.random(4) + 0.5),
             ("b", rng.standard_normal(4)), ("mu", 0.1 * rng.standard_normal(4)), ("var", rng.random(4) + 0.5)]
    outputs = [("y", [1, 72]), ("g", [2, 4, 1, 1])]
    onnx.save(_graph(nodes, [("x", ["N", 3, 6, 6])], outputs, inits), str(tmp_path / "sym.onnx"))
    with pytest.raises(DnncError, match=r"node 'softmax' \(Softmax\): a softmax over the first dimension, but "
                                        r"dnnc's first dimension is the batch; .* input 'x' has a symbolic one"):
        import_model(tmp_path / "sym.onnx")
    onnx.save(_graph(nodes, [("x", [2, 3, 6, 6])], outputs, inits), str(tmp_path / "fixed.onnx"))
    text, layer_params = import_model(tmp_path / "fixed.onnx")
    assert "# imported whole" in text and "input x: [2, 3, 6, 6]" in text and "|> reshape_1x72" in text
    net = dnnc.load(text)
    m = net.compile(batch=1, threads=1)
    for k, v in weights_for(net, layer_params).items():
        (m.params if k in m.params else m.states)[k] = v
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    got = m.forward(x=x[None])
    for o, want in zip(net.graph.outputs, ort.InferenceSession(str(tmp_path / "fixed.onnx")).run(None, {"x": x})):
        np.testing.assert_allclose(got[o][0], want, rtol=1e-5, atol=1e-5, err_msg=o)
