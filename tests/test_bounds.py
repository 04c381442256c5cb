"""Memory safety of generated code, twice over.

Statically, the verifier proves every load and store in bounds before code is emitted.
Dynamically, the debug build (compile(checks=True), --checks, DNNC_CHECKS=1) tests every index
at run time and aborts naming the kernel, buffer and index. Here schedules are broken on
purpose after the pass pipeline: the verifier refuses each broken program, and when the
verifier is switched off, the checked build stops each one at its first bad access instead
of reading or writing outside a buffer.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import dnnc
from dnnc.driver.compile import loop_stages
from dnnc.driver import stages as pipeline
from dnnc.te.expr import Binary, Const, Load, Var, substitute
from dnnc.ir import If, Kernel, Let, Loop, Program, Set, Store
from dnnc.ir.verify import VerifyError
from dnnc.driver.programs import lower_graph
from dnnc.te.optim import Optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_verifier import _drop_guards, _map_loops  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- broken schedules

def _shift_loads(body, var: str):
    """Every load's use of var becomes var + 1."""
    moved = Binary("+", Var(var), Const(1))

    def expr(e):
        return substitute(e, lambda x: Load(x.tensor, tuple(substitute(
            i, lambda y: moved if isinstance(y, Var) and y.name == var else None) for i in x.index), x.loc)
                          if isinstance(x, Load) else None)

    def stmt(s):
        if isinstance(s, Loop):
            return Loop(s.var, s.extent, tuple(stmt(b) for b in s.body), s.kind)
        if isinstance(s, If):
            return If(expr(s.cond), tuple(stmt(b) for b in s.then), tuple(stmt(b) for b in s.orelse))
        if isinstance(s, Store):
            return Store(s.buffer, s.index, expr(s.value))
        if isinstance(s, (Let, Set)):
            return type(s)(s.name, expr(s.value))
        return s

    return tuple(stmt(b) for b in body)


def drop_guards(p: Program) -> Program:
    """Padding and ragged tile edges read without their guards (the masks of vector code)."""
    return _drop_guards(p)


def grow_outer_loops(p: Program) -> Program:
    """A tile count off by one: one tile too many in every kernel's outermost loop."""
    return p.replace_kernels(Kernel(k.name, tuple(Loop(s.var, s.extent + 1, s.body, s.kind)
                                                  if isinstance(s, Loop) else s for s in k.body), k.layer)
                             for k in p.kernels)


def shift_vector_lanes(p: Program) -> Program:
    """A vector tile's offset off by one: every lane reads its right-hand neighbour."""
    return _map_loops(p, lambda s: Loop(s.var, s.extent, _shift_loads(s.body, s.var), s.kind)
                      if s.kind == "vector" else None)


def _has_serial_loop(stmts) -> bool:
    for s in stmts:
        if isinstance(s, Loop) and (s.kind == "serial" or _has_serial_loop(s.body)):
            return True
        if isinstance(s, If) and (_has_serial_loop(s.then) or _has_serial_loop(s.orelse)):
            return True
    return False


def grow_reductions(p: Program) -> Program:
    """A reduction block one tile too long: innermost serial loops run once more."""
    return _map_loops(p, lambda s: Loop(s.var, s.extent + 1, s.body, s.kind)
                      if s.kind == "serial" and not _has_serial_loop(s.body) else None)


BREAKS = {f.__name__: f for f in (drop_guards, grow_outer_loops, shift_vector_lanes, grow_reductions)}

# the network each break is shown on and the buffer its first bad access is expected to touch
# (without the checks, the same programs run to the end reading whatever lies there, or segfault)
CASES = [("drop_guards", "lenet5", "load from image[0, 0, -2, -2] (shape [2, 1, 28, 28]) in kernel c1.conv"),
         ("drop_guards", "sobel", "load from img[0, 0, -1, -1] (shape [2, 1, 64, 64]) in kernel gradients"),
         ("grow_outer_loops", "lenet5", "load from image[2, 0, 0, 0] (shape [2, 1, 28, 28])"),
         ("shift_vector_lanes", "lenet5", "load from c1.acc[0, 16] (shape [6, 16])"),
         ("grow_reductions", "lenet300", "load from image[0, 0, 28, 0] (shape [2, 1, 28, 28]) in kernel h1.flatten")]


def _scheduled(name: str) -> Program:
    net = dnnc.load(ROOT / "examples" / f"{name}.net")
    return loop_stages(lower_graph(net.at_batch(2)))[-1][1]


@pytest.mark.parametrize("brk,net,_", CASES)
def test_the_verifier_refuses_each_broken_schedule(brk, net, _):
    good = _scheduled(net)
    bad = BREAKS[brk](good)
    assert bad != good, "the break changed nothing: the test could not fail"
    with pytest.raises(VerifyError, match="out of range|outside|may be"):
        pipeline.verify(bad)


CHILD = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
import dnnc
from dnnc.driver.compile import loop_stages
from dnnc.driver import stages as pipeline
from test_bounds import BREAKS
pipeline.verify = lambda p: p  # the verifier off: only the run-time checks stand guard
last = pipeline.STAGES.index(pipeline.loop_passes()[-1])
# the forward pass's code broken, not its prepare program's (which runs first)
pipeline.STAGES.insert(last + 1, pipeline.Stage("broken", pipeline.LoopPass(BREAKS[{brk!r}]), ("forward",), "loops",
                                                "a broken pass"))
m = dnnc.load({net!r}).compile(batch=2, checks=True)
feed = {{n: np.ones((2,) + tuple(m.graph.tensors[n].shape[1:]), np.float32) for n in m.inputs}}
m.forward(**feed)
print("no bad access was caught")
"""


def test_the_checked_build_aborts_at_the_first_bad_access():
    def run(case):
        brk, net, _ = case
        code = CHILD.format(tests=str(ROOT / "tests"), brk=brk, net=str(ROOT / "examples" / f"{net}.net"))
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "DNNC_CACHE": "0"})

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, CASES))
    for (brk, net, fragment), r in zip(CASES, results):
        assert r.returncode == -signal.SIGABRT, (brk, net, r.returncode, r.stdout, r.stderr[-2000:])
        assert "no bad access" not in r.stdout
        first = r.stderr.splitlines()[0]
        assert first.startswith("dnnc: error: out-of-bounds "), (brk, net, first)
        assert fragment in first and " in kernel " in first and "(shape [" in first, (brk, net, first)


# ----------------------------------------------------------------------------- correct code, checked

@pytest.mark.parametrize("name", ["lenet5", "lenet300", "custom_op", "blur"])
def test_the_checked_build_computes_the_same_bits(name):
    net = dnnc.load(ROOT / "examples" / f"{name}.net")
    plain, checked = net.compile(batch=3), net.compile(batch=3, checks=True)
    assert "out-of-bounds" not in plain.llvm_ir
    assert checked.llvm_ir.count("out-of-bounds") >= 10
    rng = np.random.default_rng(1)
    feed = {n: rng.standard_normal((3,) + tuple(plain.graph.tensors[n].shape[1:])).astype(np.float32)
            for n in plain.inputs}
    a, b = plain.forward(**feed), checked.forward(**feed)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_a_checked_training_step_computes_the_same_bits():
    net = dnnc.load(ROOT / "examples" / "lenet5.net")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    runs = []
    for checks in (False, True):
        m = net.compile(batch=4, checks=checks)
        losses = [m.train_step(Optimizer("sgd", 0.05, 0.9), image=x, digit=y) for _ in range(2)]
        runs.append((losses, {k: v.copy() for k, v in m.params.items()}))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        assert np.array_equal(runs[0][1][k], runs[1][1][k]), k


def test_checks_from_the_environment_and_the_command_line(monkeypatch, tmp_path):
    from dnnc.api import checks_wanted

    monkeypatch.setenv("DNNC_CHECKS", "1")
    assert checks_wanted() and not checks_wanted(False)
    monkeypatch.setenv("DNNC_CHECKS", "0")
    assert not checks_wanted() and checks_wanted(True)
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28), np.float32))
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "run", "examples/lenet5.net", "--checks",
                        "--input", str(tmp_path / "x.npy")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "logits: [1, 10]" in r.stdout, r.stderr
