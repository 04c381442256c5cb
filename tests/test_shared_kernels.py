"""Kernels that differ only in the names of their buffers share one function in the emitted
code (codegen/llvm.py, `code_key`); each keeps its own symbol, a call of the shared one. The
shared code must compute each kernel's own result, so the twins below are checked against
numpy, and kernels of other shapes (or any kernel in the debug build) must not share."""
from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pytest

import dnnc
from dnnc.cli.main import main
from dnnc.codegen.llvm import code_key
from dnnc.codegen.symbols import kernel_symbol
from reference import conv2d, relu

TWINS = """network twins {
    input x: [8, 10, 10]
    a = conv(x, filters=8, kernel=3, pad=1) |> relu
    b = conv(a, filters=8, kernel=3, pad=1) |> relu
    c = conv(b, filters=4, kernel=3, pad=1)
    output c
}"""


def _body(ll: str, sym: str) -> str:
    m = re.search(r'^define void @"' + re.escape(sym) + r'"\(.*?^}', ll, re.M | re.S)
    assert m, sym
    return m.group(0)


@pytest.mark.parametrize("batch", [1, 3])
def test_twin_layers_share_one_function_and_each_computes_its_own_result(batch):
    net = dnnc.load(TWINS)
    model = net.compile(batch=batch, threads=1)
    ex = model.executable("forward")
    p = ex.program
    a, b, c = (next(k for k in p.kernels if k.layer.startswith(n)) for n in "abc")
    assert code_key(p, a) == code_key(p, b)
    assert code_key(p, a) != code_key(p, c)  # four filters: another kernel
    shared = _body(ex.llvm_ir, kernel_symbol(p.name, a.name))
    twin = _body(ex.llvm_ir, kernel_symbol(p.name, b.name))
    steps = [ln.strip() for ln in twin.splitlines()[1:-1] if ln.strip() not in ("", "{") and not ln.strip().endswith(":")]
    assert len(steps) == 2 and kernel_symbol(p.name, a.name) in steps[0] and steps[1] == "ret void"  # a call of a's
    assert kernel_symbol(p.name, b.name) not in shared and len(shared.splitlines()) > 20
    assert len(_body(ex.llvm_ir, kernel_symbol(p.name, c.name)).splitlines()) > 20  # its own code

    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 8, 10, 10)).astype(np.float32)
    prm = {k: v.astype(np.float64) for k, v in model.params.items()}
    want = relu(conv2d(x.astype(np.float64), prm["a.weight"], prm["a.bias"], pad=1))
    want = relu(conv2d(want, prm["b.weight"], prm["b.bias"], pad=1))
    want = conv2d(want, prm["c.weight"], prm["c.bias"], pad=1)
    got = model.forward(x=x)["c"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_debug_build_names_each_kernel_so_shares_none():
    model = dnnc.load(TWINS).compile(batch=1, threads=1, checks=True)
    p = model.executable("forward").program
    keys = [code_key(p, k, checks=True) for k in p.kernels]
    assert len(set(keys)) == len(keys)


def test_a_shared_kernel_is_timed_under_its_own_name(tmp_path):
    net = tmp_path / "twins.net"
    net.write_text(TWINS)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["bench", str(net), "--batch", "2", "--per-layer", "--repeat", "2", "--threads", "1"]) == 0
    text = out.getvalue()
    assert re.search(r"^a\.conv\S*\s+\d", text, re.M) and re.search(r"^b\.conv\S*\s+\d", text, re.M), text
