"""Schedules: every step computes what the naive loop nest computes (reference interpreter on
small shapes, JIT on real ones), steps print and replay, overrides apply, illegal steps are
refused, and parallel loops give the same bits for any number of threads."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dnnc
from dnnc.api import init_params
from dnnc.base.errors import DnncError
from dnnc.ir import Loop, interp, walk
from dnnc.driver.programs import lower_graph
from dnnc.te.optim import Optimizer
from dnnc.te.conv import Algorithm
from dnnc.schedule.steps import Tile, parse_step
from dnnc.driver.programs import training_program

ROOT = Path(__file__).resolve().parent.parent

SMALL = """network t {
    input x: [3, 7, 9]
    label y: 4
    c = conv(x, filters=5, kernel=3, stride=2, pad=1) |> relu
    p = maxpool(c, 2, stride=1)
    g = conv(x, filters=4, kernel=3, pad=1, groups=1) |> avgpool(3, pad=1)
    o = dense(p, 6) |> tanh
    z = dense(g, 6)
    s = add(o, z) |> softmax
    logits = dense(s, 4)
    loss softmax_cross_entropy(logits, y)
}"""


def arrays(g, seed=0):
    rng = np.random.default_rng(seed)
    out = {n: rng.normal(size=g.tensors[n].shape) for n in g.inputs}
    out.update({n: rng.integers(0, g.classes[n], g.tensors[n].shape).astype(float) for n in g.labels})
    out.update({k: v.astype(np.float64) for k, v in init_params(g, seed).items()})
    return out


def assert_agree(ref_prog, got_prog, a):
    """Both programs give the same outputs, parameters, gradients and states (float64: only
    the order of a sum's terms may differ)."""
    ref, got = interp.run(ref_prog, a), interp.run(got_prog, a)
    for b in ref_prog.buffers:
        if b.kind in ("output", "param", "grad", "state"):
            np.testing.assert_allclose(got[b.name], ref[b.name], rtol=1e-9, atol=1e-12, err_msg=b.name)


@pytest.mark.parametrize("training", [False, True])
def test_scheduled_equals_naive_in_the_interpreter(training):
    net = dnnc.load(SMALL)
    g = net.at_batch(2, training=training)
    if training:
        naive = training_program(g, Optimizer("sgd", 0.1, 0.9), "f64", schedule=False)
        tiled = training_program(g, Optimizer("sgd", 0.1, 0.9), "f64")
    else:  # in float64, so only the order of a sum's terms can differ
        naive, tiled = lower_graph(g, dtype="f64", schedule=False), lower_graph(g, dtype="f64")
    assert any(isinstance(s, Loop) and s.kind == "vector" for k in tiled.kernels for s in walk(k.body))
    # the ReLU runs after the overlapping pool (which is not fused with the conv)
    assert "p+relu" in [k.name for k in tiled.kernels] and "c.relu" not in [b.name for b in tiled.buffers]
    assert_agree(naive, tiled, arrays(g))


POOLED = """network t {
    input x: [2, 7, 9]
    label y: 3
    c = conv(x, filters=5, kernel=3, pad=1) |> relu |> maxpool(2)
    s = conv(x, filters=4, kernel=2) |> sigmoid |> maxpool(3)
    q = conv(x, filters=3, kernel=3, pad=1) |> relu |> maxpool(2, pad=1)
    a = dense(s, 3)
    b = dense(q, 3)
    logits = dense(c, 3) |> add(a) |> add(b)
    loss softmax_cross_entropy(logits, y)
}"""


@pytest.mark.parametrize("training", [False, True])
def test_conv_relu_pool_fusion_equals_naive_in_the_interpreter(training):
    """Ragged windows (7x9 into 2x2 and 3x3), a sigmoid, and a padded pool that stays unfused."""
    g = dnnc.load(POOLED).at_batch(2, training=training)
    if training:
        naive = training_program(g, Optimizer("sgd", 0.1, 0.9), "f64", schedule=False)
        fused = training_program(g, Optimizer("sgd", 0.1, 0.9), "f64")
    else:
        naive, fused = lower_graph(g, dtype="f64", schedule=False), lower_graph(g, dtype="f64")
    kernels = [k.name for k in fused.kernels]
    buffers = {b.name: b.shape for b in fused.buffers}
    assert "c.conv+maxpool+relu" in kernels and "s.conv+maxpool+sigmoid" in kernels
    assert "c.conv" not in buffers and "s.conv" not in buffers and "c.relu" not in buffers
    assert "q.conv" in buffers  # the padded pool reads outside the conv: not fused
    if training:  # the forward saves the pooled values and the argmax, a quarter of the conv
        assert buffers["c.pre"] == buffers["c.pre.arg"] == (2, 5, 3, 4)
        assert "c.conv.grad" in buffers and naive.buffers != fused.buffers
    assert_agree(naive, fused, arrays(g))


def test_pool_first_needs_a_monotone_activation():
    from dnnc.te.expr import Binary, Const, Load, Unary, Var
    from dnnc.te.pool import monotone

    x = Load("c", (Var("i"),))
    assert monotone(Binary("max", x, Const(0.0)), x) and monotone(Unary("sigmoid", Binary("*", Const(2.0), x)), x)
    assert not monotone(Unary("neg", x), x) and not monotone(Binary("*", x, x), x)
    assert not monotone(Binary("*", Const(-1.0), x), x) and not monotone(Unary("abs", x), x)
    src = POOLED.replace("|> sigmoid |> maxpool(3)", "|> abs_op |> maxpool(3)").replace(
        "network t {", "op abs_op(x[...]) -> y[...] { y[...] = abs(x[...]) }\nnetwork t {")
    prog = lower_graph(dnnc.load(src).at_batch(1))
    # |x| stays before the pool (no s.pre), all three computed in one nest
    assert "s.conv+abs_op+maxpool" in [k.name for k in prog.kernels]
    assert "s.pre" not in [b.name for b in prog.buffers]


def test_scheduled_equals_naive_in_the_jit():
    net = dnnc.load(ROOT / "examples" / "lenet5.net")
    x = np.random.default_rng(0).normal(size=(7, 1, 28, 28))
    a = net.compile(batch=7, schedule=False, threads=1).forward(image=x)["logits"]
    b = net.compile(batch=7, threads=2).forward(image=x)["logits"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_threads_give_the_same_bits():
    net = dnnc.load(ROOT / "examples" / "lenet5.net")
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(32, 1, 28, 28)), rng.integers(0, 10, 32).astype(float)
    results = []
    for threads in (1, 2, 3):
        m = net.compile(batch=32, threads=threads)
        prog = m.executable("train", Optimizer("sgd", 0.05, 0.9)).program
        assert any(isinstance(s, Loop) and s.kind == "parallel" for k in prog.kernels for s in k.body)
        for step in range(3):
            m.train_step(Optimizer("sgd", 0.05, 0.9), step=step + 1, image=x, digit=y)
        results.append({k: v.copy() for k, v in m.params.items()})
    for other in results[1:]:
        for k in results[0]:
            np.testing.assert_array_equal(results[0][k], other[k], err_msg=k)


def _os_threads() -> int:
    import os

    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts threads through /proc")
def test_the_thread_pool_persists_and_ends_with_its_model():
    """Workers start on first use, serve every later call (no thread per call), and end when
    the model is freed, so models can come and go without leaking threads."""
    import gc

    net = dnnc.load(ROOT / "examples" / "lenet5.net")
    x = np.random.default_rng(0).normal(size=(64, 1, 28, 28))
    gc.collect()  # models of earlier tests, and their workers
    before = _os_threads()
    for _ in range(3):
        m = net.compile(batch=64, threads=3)
        first = m.forward(image=x)["logits"]
        running = _os_threads()
        assert running == before + 2  # two workers beside the caller
        for _ in range(5):
            np.testing.assert_array_equal(m.forward(image=x)["logits"], first)
        assert _os_threads() == running
        del m
        gc.collect()
        assert _os_threads() == before


def test_steps_print_and_replay():
    for text in ("tile(c1.conv, vector=j:16, unroll=f:6, parallel)", "tile(f3.grad#2, vector=k:8)",
                 "tile(x, vector=a:4, unroll=b:2)"):
        assert str(parse_step(text)) == text
    with pytest.raises(DnncError):
        parse_step("tile(c1.conv, vector=j)")
    with pytest.raises(DnncError):
        parse_step("tile(c1.conv, vector=j:12)")  # not a power of two
    with pytest.raises(DnncError):
        parse_step("tile(c1.conv, vector=j:16, unroll=j:2)")


def test_overrides_replace_the_default_and_stay_correct():
    net = dnnc.load(ROOT / "examples" / "lenet5.net")
    g = net.at_batch(2)
    step = Tile("c1.conv", "i", 8, "f", 3)
    prog = lower_graph(g, schedule=[step])
    assert step in prog.schedule
    assert not any(isinstance(s, Tile) and s.tensor == "c1.conv" and s != step for s in prog.schedule)
    x = np.random.default_rng(1).normal(size=(2, 1, 28, 28))
    a = net.compile(batch=2, schedule=[step]).forward(image=x)["logits"]
    b = net.compile(batch=2, schedule=False).forward(image=x)["logits"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_illegal_step_is_refused():
    net = dnnc.load(ROOT / "examples" / "lenet5.net")
    with pytest.raises(DnncError, match="axis that c1.relu does not have"):
        net.compile(batch=2, schedule=[Tile("c1.relu", "q", 8)])  # c1.relu: the conv fused with it
    with pytest.raises(DnncError, match="no statement writes c9"):
        net.compile(batch=2, schedule=[Tile("c9", "j", 8)])
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "ir", "examples/lenet5.net", "--schedule", "tile(bad"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--schedule" in r.stderr


def test_schedule_block_in_the_source():
    src = (ROOT / "examples" / "lenet5.net").read_text().replace(
        "    train {", "    schedule { c1.conv = tile(vector=i, width=8, unroll=f, factor=2) }\n    train {")
    net = dnnc.load(src)
    prog = lower_graph(net.at_batch(1))
    assert Tile("c1.conv", "i", 8, "f", 2) in prog.schedule
    with pytest.raises(DnncError, match="tile"):
        dnnc.load(src.replace("tile(vector=i", "tile(vectr=i")).compile()


def test_cli_prints_the_schedule():
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "ir", "examples/lenet5.net", "--stage", "schedule",
                        "--batch", "64"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    assert "tile(c1, vector=j:16, unroll=c:6, parallel)" in r.stdout  # conv, ReLU and pool fused
    assert "pack(f3.weight, perm=[1, 0], for=f3)" in r.stdout


def test_info_prints_the_planned_training_memory():
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "info", "examples/lenet5.net", "--batch", "64",
                        "--training"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # LeNet-5 has 61,706 parameters: 241 KiB each of weights, gradients and momentum
    assert "weights 241 KiB, gradients 241 KiB, optimizer state 241 KiB" in out
    assert "activations (one workspace shared by liveness)" in out
    shared = float(out.split("shared by liveness) ")[1].split(" MiB")[0])
    alone = float(out.split("would take ")[1].split(" MiB")[0])
    assert shared < alone  # the planner shares storage


def test_bench_times_every_kernel():
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "bench", "examples/lenet5.net", "--batch", "8",
                        "--training", "--per-layer", "--repeat", "2", "--threads", "1"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for kernel in ("c1.conv+maxpool+relu ", "c2.conv.grad ", "f3.weight.update ", "sum of kernels"):
        assert kernel in out
    assert "whole step:" in out and "images/s" in out and "compile:" in out
    conv = next(line for line in out.splitlines() if line.startswith("c1.conv+maxpool+relu "))
    assert float(conv.split()[3]) > 0  # GFLOP/s from the tensor expressions' FLOP count


ALGOS = """network t {
    input x: [3, 6, 7]
    label y: 3
    c = conv(x, filters=4, kernel=3, pad=1) |> relu
    d = conv(c, filters=5, kernel=3, stride=2, pad=1)
    logits = dense(d, 3)
    loss softmax_cross_entropy(logits, y)
    schedule { c.conv = winograd; d = im2col }
}"""


@pytest.mark.parametrize("training", [False, True])
def test_conv_algorithms_equal_direct_in_the_interpreter(training):
    """Winograd F(2x2, 3x3) on a ragged 6x7 map, im2col with stride and padding; the backward
    is derived through the transforms."""
    g = dnnc.load(ALGOS).at_batch(2, training=training)
    plain = dnnc.load(ALGOS.replace("c.conv = winograd; d = im2col", "c.conv = direct")).at_batch(2, training=training)
    if training:
        ref_p = training_program(plain, Optimizer("sgd", 0.1, 0.9), "f64", schedule=False)
        got_p = training_program(g, Optimizer("sgd", 0.1, 0.9), "f64")
    else:
        ref_p, got_p = lower_graph(plain, dtype="f64", schedule=False), lower_graph(g, dtype="f64")
    assert Algorithm("c.conv", "winograd") in got_p.schedule and Algorithm("d", "im2col") in got_p.schedule
    kernels = [k.name for k in got_p.kernels]
    assert {"c.conv.wino_u", "c.conv.wino_v", "c.conv.wino_m", "d.col"} <= set(kernels)
    assert_agree(ref_p, got_p, arrays(g))


def test_conv_algorithm_steps_are_checked():
    assert str(parse_step("algorithm(c1.conv, winograd)")) == "algorithm(c1.conv, winograd)"
    with pytest.raises(DnncError, match="unknown convolution algorithm 'fft'"):
        parse_step("algorithm(c1.conv, fft)")
    bad = ALGOS.replace("d = im2col", "d = winograd")  # a stride-2 layer
    with pytest.raises(DnncError, match="needs a 3x3 kernel at stride 1"):
        lower_graph(dnnc.load(bad).at_batch(1))
    with pytest.raises(DnncError, match="is not a convolution"):
        lower_graph(dnnc.load(ALGOS.replace("d = im2col", "logits = im2col")).at_batch(1))


def test_a_tile_on_a_scatter_is_refused():
    """flatten's gradient is a scatter (written at computed positions): lanes could collide."""
    g = dnnc.load(ROOT / "examples" / "lenet5.net").at_batch(2, training=True)
    with pytest.raises(DnncError, match=r"tile\(c2.grad#1, vector=k:16\): c2.grad cannot be tiled: .* scatter"):
        training_program(g, Optimizer("sgd", 0.1), schedule=[parse_step("tile(c2.grad#1, vector=k:16)")])


WIDE = """network t {
    input x: [2, 5, 70]
    label y: 3
    c = conv(x, filters=3, kernel=3, pad=1) |> relu
    logits = dense(c, 3)
    loss softmax_cross_entropy(logits, y)
}"""


@pytest.mark.parametrize("training", [False, True])
def test_split_edges_peels_masked_edges_and_computes_the_same(training, monkeypatch):
    """70-wide rows in vectors of 16: the first and last vectors keep their masks, the middle
    ones lose them; every stage computes what the lowered loops compute."""
    from dnnc.driver.compile import loop_stages
    from dnnc.ir import If
    from dnnc.ir.passes import split

    monkeypatch.setattr(split, "MIN_ENTRIES", 1)  # split even the loops of these small shapes

    g = dnnc.load(WIDE).at_batch(2, training=training)
    prog = training_program(g, Optimizer("sgd", 0.1, 0.9), "f64") if training else lower_graph(g, dtype="f64")
    stages = dict(loop_stages(prog))

    def guarded_vectors(p):
        return sum(1 for k in p.kernels for s in walk(k.body) if isinstance(s, Loop) and s.kind == "vector"
                   and any(isinstance(b, If) for b in s.body))

    def loops(p):
        return sum(1 for k in p.kernels for s in walk(k.body) if isinstance(s, Loop))

    assert loops(stages["split_edges"]) > loops(stages["loops"])  # some loops were split
    assert guarded_vectors(stages["fold_guards"]) < guarded_vectors(stages["split_edges"])
    a = arrays(g)
    ref = interp.run(stages["loops"], a)
    for name in ("split_edges", "fold_guards"):
        got = interp.run(stages[name], a)
        for b in prog.buffers:
            if b.kind in ("output", "param", "grad", "state"):
                np.testing.assert_array_equal(got[b.name], ref[b.name], err_msg=f"{name}: {b.name}")


RESIDUAL = """
network res {
    input image: [4, 4, 4]
    label digit: 10
    x = conv(image, filters=128, kernel=3, pad=1)
    a = conv(x, filters=128, kernel=3, pad=1) |> relu
    y = add(a, x) |> relu
    logits = dense(y, 10)
    loss softmax_cross_entropy(logits, digit)
}
"""


def test_a_pack_serves_the_statement_it_was_made_for():
    """x.grad is written twice: by the residual add, then by a's transposed convolution, which
    reads a.conv.grad packed along the batch (16 fills a vector). The packed copy belongs before
    that second writer; made before the first, it read a.conv.grad before it existed
    (a VerifyError that ResNet-18 hit at batch 16 and not at 8)."""
    net = dnnc.load(RESIDUAL)
    g = net.at_batch(16, training=True)
    from dnnc.driver.programs import training_groups
    from dnnc.schedule.steps import Pack
    from dnnc.target import CPU

    u = training_groups(g)
    steps = CPU.default_schedule([s for _, st in u.groups for s in st], u.shapes, "f32")
    assert "pack(a.conv.grad, perm=[1, 2, 3, 0], for=x.grad#1)" in [str(s) for s in steps if isinstance(s, Pack)]
    rng = np.random.default_rng(0)
    feed = {"image": rng.normal(size=(16, 4, 4, 4)).astype(np.float32), "digit": rng.integers(0, 10, 16)}
    tuned, naive = net.compile(batch=16), net.compile(batch=16, schedule=False)
    naive.params.update_from(tuned.params)
    loss, grads = tuned.loss_and_grad(**feed)
    loss0, grads0 = naive.loss_and_grad(**feed)
    assert abs(loss - loss0) <= 1e-5 * abs(loss0)
    for k, g0 in grads0.items():
        np.testing.assert_allclose(grads[k], g0, rtol=1e-4, atol=1e-5 * float(np.abs(g0).max()), err_msg=k)
