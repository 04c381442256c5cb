"""ONNX's own node test cases for every op `dnnc import` reads, through import, compile and run.

Weights and settings given as inputs (a Conv's W and B, a Gemm's B and C, a MatMul's B,
BatchNormalization's statistics, LayerNormalization's scale and bias, Reshape's shape, Clip's
bounds, Dropout's ratio and training mode, PRelu's slope, Squeeze's axes) become initializers
from the case's data; every other input stays an input. A case imported whole (its graph mixes
examples along the first dimension, see dnnc/onnx_import.py) runs as one example. Each case
passes (dnnc computes ONNX's expected output to 1e-4), is refused with a reason (integer
types, a training mode, outputs dnnc cannot compute), or fails: a wrong number is never accepted.
"""
from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import dnnc  # noqa: E402
from dnnc.base.errors import DnncError  # noqa: E402
from dnnc.io.onnx_io import import_model, weights_for  # noqa: E402

OPS = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Relu", "Sigmoid", "Tanh", "LeakyRelu",
       "PRelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softplus", "Clip", "Neg", "Exp", "Log", "Sqrt", "Abs",
       "Gemm", "MatMul", "Softmax", "LogSoftmax", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Add", "Sub",
       "Mul", "Div", "Concat", "BatchNormalization", "LayerNormalization", "Dropout", "Identity")
WEIGHTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "BatchNormalization": (1, 2, 3, 4), "Reshape": (1,),
           "Clip": (1, 2), "LayerNormalization": (1, 2), "Dropout": (1, 2), "PRelu": (1,), "Squeeze": (1,),
           "Unsqueeze": (1,)}


def cases():
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in load_model_tests(kind="node"):
            if c.model is not None and len(c.model.graph.node) == 1 and c.model.graph.node[0].op_type in OPS \
                    and c.data_sets:
                yield c


def run_case(c, tmp_path) -> tuple[str, str]:
    """('pass' | 'refused' | 'fail', detail)."""
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(c.model)
    node = model.graph.node[0]
    inputs, outputs = c.data_sets[0]
    const = set(WEIGHTS.get(node.op_type, ()))
    feeds = {}
    for k, (vi, value) in enumerate(zip(list(model.graph.input), inputs)):
        if k in const:
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), vi.name))
        else:
            feeds[vi.name] = np.asarray(value)
    keep = [vi for k, vi in enumerate(model.graph.input) if k not in const]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    path = tmp_path / f"{c.name}.onnx"
    onnx.save(model, str(path))
    try:
        text, layer_params = import_model(path)
        net = dnnc.load(text)
        names = dict(zip([vi.name for vi in keep], net.graph.inputs))
        whole = all(net.inputs[names[k]] == v.shape for k, v in feeds.items())  # imported whole: one example
        m = net.compile(batch=1 if whole else next(iter(feeds.values())).shape[0], threads=1)
        for k, v in weights_for(net, layer_params).items():
            (m.params if k in m.params else m.states)[k] = v
        result = m.forward(**{names[k]: v[None] if whole else v for k, v in feeds.items()})
        got = [result[o][0] if whole else result[o] for o in net.graph.outputs]
    except DnncError as e:
        return "refused", str(e).split("error: ")[-1][:160]
    except Exception as e:  # anything else is a dnnc bug
        return "fail", f"{type(e).__name__}: {e}"[:200]
    if len(got) != len(outputs):
        return "fail", f"{len(got)} outputs, not {len(outputs)}"
    for g, w in zip(got, map(np.asarray, outputs)):
        if g.shape != w.shape:
            return "fail", f"shape {g.shape} vs {w.shape}"
        if not np.allclose(g, w, rtol=1e-4, atol=1e-4):
            return "fail", f"max difference {np.abs(g - w).max():.3g}"
    return "pass", ""


def test_onnx_node_cases(tmp_path, capsys):
    by_op = collections.defaultdict(collections.Counter)
    failures = []
    for c in cases():
        op = c.model.graph.node[0].op_type
        verdict, detail = run_case(c, tmp_path)
        by_op[op][verdict] += 1
        if verdict == "fail":
            failures.append(f"{c.name}: {detail}")
    with capsys.disabled():
        print("\nONNX node cases, by op (pass / refused):")
        for op in OPS:
            print(f"  {op:20s} {by_op[op]['pass']:3d} / {by_op[op]['refused']:3d}")
    assert not failures, "wrong results:\n" + "\n".join(failures)
    assert sum(v["pass"] for v in by_op.values()) >= 203  # as measured; see the README for the refused
