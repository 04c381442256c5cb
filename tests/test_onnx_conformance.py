"""ONNX's own node test cases for the ops dnnc has layers for, through import, compile and run.

Weights (a Conv's W and B, a Gemm's B and C, a MatMul's B, BatchNormalization's statistics,
Reshape's shape) become initializers from the case's data; every other input stays an input.
Each case passes (dnnc computes ONNX's expected output), is refused with a reason (a feature
dnnc's layers do not have), or fails: a wrong number is never accepted.
"""
from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import dnnc  # noqa: E402
from dnnc.errors import DnncError  # noqa: E402
from dnnc.onnx_io import import_model, weights_for  # noqa: E402

OPS = ("Conv", "MaxPool", "AveragePool", "Relu", "Sigmoid", "Tanh", "Gemm", "MatMul", "Softmax", "LogSoftmax",
       "Flatten", "Reshape", "Add", "Concat", "BatchNormalization", "Dropout")
WEIGHTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "BatchNormalization": (1, 2, 3, 4), "Reshape": (1,)}


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
    if any(np.asarray(v).dtype != np.float32 for v in feeds.values()) or any(
            np.asarray(o).dtype != np.float32 for o in outputs):
        return "refused", "not float32"
    if len(outputs) != 1:
        return "refused", f"{len(outputs)} outputs"
    path = tmp_path / f"{c.name}.onnx"
    onnx.save(model, str(path))
    try:
        text, layer_params = import_model(path)
        net = dnnc.load(text)
        batch = next(iter(feeds.values())).shape[0]
        m = net.compile(batch=batch, threads=1)
        for k, v in weights_for(net, layer_params).items():
            (m.params if k in m.params else m.states)[k] = v
        names = dict(zip([vi.name for vi in keep], net.graph.inputs))
        got = m.forward(**{names[k]: v for k, v in feeds.items()})[net.graph.outputs[0]]
    except DnncError as e:
        return "refused", str(e).split("error: ")[-1][:140]
    except Exception as e:  # anything else is a dnnc bug
        return "fail", f"{type(e).__name__}: {e}"[:200]
    want = np.asarray(outputs[0])
    if got.shape != want.shape:
        return "refused" if got.size != want.size else "fail", f"shape {got.shape} vs {want.shape}"
    if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        return "fail", f"max difference {np.abs(got - want).max():.3g}"
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
    assert sum(v["pass"] for v in by_op.values()) >= 31  # as measured; see the README for the refused
