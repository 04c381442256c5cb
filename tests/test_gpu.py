"""The GPU target without a GPU, and with one where there is.

Binding (ir/passes/grid.py) only splits kernels and marks loops, so a bound program run on
the CPU must give the unbound program's bits; its independence test is checked on nests
that must and must not be bound. Every zoo network's PTX is generated and, where ptxas is
installed (the `nvidia-cuda-nvcc` wheel of the test extra), assembled. Tests marked `gpu`
run the same networks on the device against the CPU and skip cleanly without one.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dnnc
from dnnc.driver import compile as driver
from dnnc.driver.programs import training_program, lower_graph
from dnnc.front.settings import optimizer_spec
from dnnc.ir import Buffer, Kernel, Let, Loop, Program, Set, Store, show_program
from dnnc.ir.passes.grid import bind_grid, grid_loops
from dnnc.ir.passes.rfactor import split_reductions
from dnnc.runtime import ptx
from dnnc.target import CPU, get
from dnnc.te.expr import Binary, Const, Load, Scalar, Var

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ZOO = ["lenet5", "resnet18", "resnet20", "mobilenetv2", "squeezenet", "densenet", "vgg11_bn"]


def _run_on_cpu(prog: Program, seed: int, dtype: str = "f64") -> dict:
    """Every argument of prog after one run on the CPU in dtype (float64 unless asked), from
    seeded random values."""
    arrays: dict = {}
    ex = driver.Built(driver.from_program(prog, CPU, dtype=dtype), arrays)
    _fill(prog, arrays, seed)
    ex.run()
    return {b.name: arrays[b.name].copy() for b in prog.args}


def _fill(prog: Program, arrays, seed: int) -> None:
    """prog's arguments set to seeded random values (labels below 10, hyperparameters 0.01)."""
    rng = np.random.default_rng(seed)
    for b in prog.args:
        if b.kind == "label":
            arrays[b.name][...] = rng.integers(0, 10, b.shape)
        elif b.kind == "hyper":
            arrays[b.name][...] = 0.01
        else:
            arrays[b.name][...] = rng.standard_normal(b.shape) * 0.1


SMALL = {"resnet18": (3, 16, 16), "mobilenetv2": (3, 16, 16), "densenet": (1, 8, 8)}  # as test_zoo sizes them
# the training programs of the larger networks take 20-70 s each here: DNNC_GPU_ZOO=full checks them too
BOUND = [("lenet5", "train"), ("mlp_dropout", "train"), ("resnet20", "forward")] + (
    [(n, "train") for n in SMALL] if os.environ.get("DNNC_GPU_ZOO") == "full" else [])


@pytest.mark.parametrize("name,kind", BOUND)
def test_bound_programs_compute_the_same_bits(name, kind, monkeypatch):
    net = dnnc.load(EXAMPLES / f"{name}.net")
    if name in SMALL:
        net = net.with_inputs({"image": SMALL[name]})
    if kind == "train":
        prog = training_program(net.at_batch(8, training=True), optimizer_spec("sgd(lr=0.1, momentum=0.9)"),
                                dtype="f64", schedule=False)
    else:
        prog = lower_graph(net.at_batch(2), dtype="f64", schedule=False)
    prog = driver.loop_stages(prog)[-1][1]
    bound = bind_grid(prog)
    assert len(bound.kernels) >= len(prog.kernels)
    assert sum(1 for k in bound.kernels if grid_loops(k.body)[0]) > len(bound.kernels) // 2
    want, got = _run_on_cpu(prog, 1), _run_on_cpu(bound, 1)
    for n in want:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)
    # register tiles of outputs per thread: each output folds its terms in the same order (the
    # CPU's code, free to reassociate sums, may still round the two differently; in float64
    # that stays far below the tolerance even through a training step's batchnorm)
    import dnnc.ir.passes.thread_tile as tt

    tt_min, tt.MIN_THREADS = tt.MIN_THREADS, 1  # these small batches would keep their threads
    try:
        tiled = tt.tile_threads(bound)
    finally:
        tt.MIN_THREADS = tt_min
    assert any(b.kind == "local" for b in tiled.buffers) and tiled != bound
    got = _run_on_cpu(tiled, 1)
    for n in want:
        scale = max(1.0, float(np.abs(want[n]).max(initial=0)))
        np.testing.assert_allclose(got[n], want[n], rtol=1e-9, atol=1e-9 * scale, err_msg=f"tiled: {n}")
    # contractions staged through shared memory by blocks of threads: unsplit, each output
    # adds the same terms in the same order (and zeros past the edges); split, in slices
    import dnnc.ir.passes.shared as sh

    monkeypatch.setattr(sh, "MAX_PADDING", 8.0)  # these small batches would not fill a tile
    for min_slice in (sh.MIN_SLICE, 1):
        monkeypatch.setattr(sh, "MIN_SLICE", min_slice)
        staged = sh.stage_shared(bound)
        assert any(b.kind == "shared" for b in staged.buffers)
        assert min_slice > 1 or any(k.name.endswith(".split") for k in staged.kernels)
        got = _run_on_cpu(staged, 1)
        for n in want:
            scale = max(1.0, float(np.abs(want[n]).max(initial=0)))
            np.testing.assert_allclose(got[n], want[n], rtol=1e-9, atol=1e-9 * scale, err_msg=f"staged: {n}")
    # narrow folds unrolled: the same terms added in the same order
    from dnnc.ir.passes.unroll import unroll_folds

    unrolled = unroll_folds(bound)
    assert unrolled != bound
    got = _run_on_cpu(unrolled, 1)
    for n in want:
        scale = max(1.0, float(np.abs(want[n]).max(initial=0)))
        np.testing.assert_allclose(got[n], want[n], rtol=1e-12, atol=1e-12 * scale, err_msg=f"unrolled: {n}")
    # long reductions of few threads split in two: the same values, summed in another order
    split = split_reductions(bound)
    assert any(k.name.endswith(".part") for k in split.kernels)
    got = _run_on_cpu(split, 1)
    for n in want:
        scale = max(1.0, float(np.abs(want[n]).max(initial=0)))
        np.testing.assert_allclose(got[n], want[n], rtol=1e-9, atol=1e-9 * scale, err_msg=n)


def _bound(*stmts, shapes=None):
    shapes = shapes or {"x": (400,), "y": (16, 5, 5), "out": (10,)}
    p = Program("t", tuple(Buffer(n, s, "param") for n, s in shapes.items()), (Kernel("k", tuple(stmts)),))
    return [tuple(lp.var for lp in grid_loops(k.body)[0]) for k in bind_grid(p).kernels]


def _add(a, b):
    return Binary("+", a, b)


def _rounded(x: np.ndarray, precision: str) -> np.ndarray:
    """x rounded to a tensor core's operand format, in numpy: float32, then its mantissa cut
    to 10 bits (tf32, to nearest, ties away) or 7 (bf16, to nearest, ties to even)."""
    if precision == "fp32":
        return x
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    if precision == "tf32":
        bits = (bits + 0x1000) & 0xFFFFE000
    else:
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("m,n,k", [(48, 40, 37), (64, 128, 64), (7, 300, 20)])
def test_a_staged_product_computes_the_product_of_its_rounded_operands(precision, m, n, k, monkeypatch):
    """A matrix product through shared memory, in each precision's layout of the threads'
    cells (tensor cores: the fragments of ir.Mma), against numpy on operands rounded alike:
    ragged tiles, ragged chunks of the reduction and split reductions included."""
    import dnnc.ir.passes.shared as sh
    from dnnc.ir.verify import verify

    monkeypatch.setattr(sh, "MAX_PADDING", 64.0)
    i, j, r = Var("i"), Var("j"), Var("r")
    fold = Set("acc", _add(Scalar("acc"), Binary("*", Load("x", (i, r)), Load("w", (r, j)))))
    body = Loop("i", m, (Loop("j", n, (Let("acc", Load("b", (j,))), Loop("r", k, (fold,)),
                                       Store("y", (i, j), Scalar("acc"))), "grid"),), "grid")
    bufs = (Buffer("x", (m, k), "input"), Buffer("w", (k, n), "param"), Buffer("b", (n,), "param"),
            Buffer("y", (m, n), "output"))
    p = Program("mm", bufs, (Kernel("mm", (body,)),))
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((m, k)), rng.standard_normal((k, n)), rng.standard_normal(n)
    want = _rounded(x, precision) @ _rounded(w, precision) + b
    for min_slice in (sh.MIN_SLICE, 1):
        monkeypatch.setattr(sh, "MIN_SLICE", min_slice)
        staged = verify(sh.stage_shared(p, precision))
        assert any(bf.kind == "shared" for bf in staged.buffers)
        assert (precision != "fp32") == ("mma." in show_program(staged))
        arrays: dict = {}
        ex = driver.Built(driver.from_program(staged, CPU, dtype="f64"), arrays)
        arrays["x"][...], arrays["w"][...], arrays["b"][...] = x, w, b
        ex.run()
        np.testing.assert_allclose(arrays["y"], want, rtol=1e-12, atol=1e-12)


def test_only_independent_loops_are_bound():
    i, j, k = Var("i"), Var("j"), Var("k")
    x = lambda ix: Load("x", (ix,))
    # one sum into one element: every iteration writes out[0]
    assert _bound(Loop("i", 10, (Store("out", (Const(0),), _add(Load("out", (Const(0),)), x(i))),))) == [()]
    # a row sum: the rows are independent, the columns are not
    term = x(_add(Binary("*", i, Const(40)), j))
    row = Loop("i", 10, (Loop("j", 40, (Store("out", (i,), _add(Load("out", (i,)), term)),)),))
    assert _bound(row) == [("i",)]
    # a flattened scatter is one element per point (k / 25, k / 5 % 5, k % 5 is k)
    flat = (Binary("/", k, Const(25)), Binary("%", Binary("/", k, Const(5)), Const(5)), Binary("%", k, Const(5)))
    assert _bound(Loop("k", 400, (Store("y", flat, x(k)),))) == [("k",)]
    # two points scatter into one element
    assert _bound(Loop("k", 10, (Store("out", (Binary("/", k, Const(2)),),
                                       _add(Load("out", (Binary("/", k, Const(2)),)), x(k))),))) == [()]
    # a read of the element another point writes
    assert _bound(Loop("i", 9, (Store("out", (_add(i, Const(1)),), Load("out", (i,))),))) == [()]
    # a register carried across iterations, declared before the loop: one single-thread kernel
    acc = (Let("s", Const(0.0)), Loop("i", 10, (Set("s", _add(Scalar("s"), x(i))),)),
           Store("out", (Const(0),), Scalar("s")))
    assert _bound(*acc) == [()]
    # independent nests around it become kernels of their own, in order
    copy = Loop("i", 10, (Store("out", (i,), x(i)),))
    assert _bound(copy, *acc, copy) == [("i",), (), ("i",)]


def _ptxas() -> str | None:
    found = shutil.which("ptxas")
    if found:
        return found
    try:
        import nvidia

        for base in nvidia.__path__:
            for cand in sorted(Path(base).glob("cu*/bin/ptxas")):
                return str(cand)
    except ImportError:
        pass
    return None


def _ptx_of(name: str, kind: str, batch: int, target: str = "cuda") -> tuple[dict, str]:
    net = dnnc.load(EXAMPLES / f"{name}.net")
    from dnnc.driver.unit import Job

    training = kind == "train"
    job = Job(net.at_batch(batch, training=training), get(target), kind,
              optimizer_spec("sgd(lr=0.1, momentum=0.9)") if training else None, "f32")
    u = driver.run(job)
    obj = json.loads(ptx.object_code(u.llvm_ir))
    assert obj["ptx"] and all(".target sm_90" in t for t in obj["ptx"])
    assert len(obj["ptx"]) == u.llvm_ir.count("; ModuleID")
    return {**obj, "ptx": "\n".join(obj["ptx"]), "parts": obj["ptx"]}, u.llvm_ir


CASES = [(n, "forward", "fp32") for n in ZOO] + [(n, "train", "fp32") for n in ("lenet5", "squeezenet")] + [
    (n, kind, p) for p in ("tf32", "bf16") for n, kind in (("resnet20", "forward"), ("lenet5", "train"))]


@pytest.mark.parametrize("name,kind,precision", CASES)
def test_ptx_of_zoo_networks_assembles(name, kind, precision, tmp_path):
    obj, llvm_ir = _ptx_of(name, kind, 2 if precision == "fp32" else 16, f"cuda:{precision}")
    assert ".target sm_90" in obj["ptx"]
    assert (precision == "fp32") == ("mma.sync" not in obj["ptx"])
    entries = obj["ptx"].count(".visible .entry")
    assert entries == len({x["entry"] for x in obj["launches"]}) and len(obj["launches"]) == llvm_ir.count("; launch ")
    assert all(x["points"] >= 1 for x in obj["launches"])
    tool = _ptxas()
    if tool is None:
        pytest.skip("no ptxas (pip install nvidia-cuda-nvcc)")
    for k, text in enumerate(obj["parts"]):
        src = tmp_path / f"k{k}.ptx"
        src.write_text(text)
        r = subprocess.run([tool, "-arch=sm_90", str(src), "-o", str(tmp_path / f"k{k}.cubin")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[:2000]


def test_modules_compiled_side_by_side_give_the_ptx_of_one_process(monkeypatch):
    """LeNet-5's training program is several modules (codegen/nvptx.py); worker processes
    compile them to the PTX this process does, each in its place."""
    _, llvm_ir = _ptx_of("lenet5", "train", 2)
    assert len(ptx.modules(llvm_ir)) >= 3
    monkeypatch.setattr(ptx, "WORKERS", 1)
    here = ptx.parts(llvm_ir)
    monkeypatch.setattr(ptx, "WORKERS", 2)
    assert ptx.parts(llvm_ir) == here
    with pytest.raises(RuntimeError, match="the PTX compiler process failed"):
        ptx.parts(llvm_ir.replace("ret void", "ret i32 0", 1))


def test_the_printed_stages_show_bound_loops_and_ptx():
    from dnnc.cli.main import main
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["ir", str(EXAMPLES / "lenet5.net"), "--target", "cuda", "--stage", "bind"]) in (0, None)
    assert "grid for" in out.getvalue()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        argv = ["ir", str(EXAMPLES / "lenet5.net"), "--target", "cuda", "--stage", "ptx", "--layer", "f3"]
        assert main(argv) in (0, None)
    assert ".visible .entry" in out.getvalue()


def gpu_available() -> bool:
    try:
        from dnnc.runtime.cuda import device

        device(0)
        return True
    except Exception:
        return False


GPU = gpu_available()
gpu = pytest.mark.skipif(not GPU, reason="no NVIDIA GPU, driver or cuda-bindings here")


@pytest.mark.skipif(GPU, reason="a GPU is here")
def test_without_a_gpu_the_cuda_target_says_so_in_one_line():
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "train", str(EXAMPLES / "lenet5.net"), "--target", "cuda",
                        "--epochs", "1"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cuda" in lines[0] and ("driver" in lines[0] or "GPU" in lines[0] or "pip install" in lines[0])


def _close(got, want, what, rtol=1e-4):
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def _compare(name: str, batch: int, steps: int = 3):
    """The GPU against the CPU, both in float32, each measured against the CPU in float64 on
    the same weights and batch: the forward pass, the training loss and every gradient, and
    the weights after three SGD steps. A training step in float32 is not reproducible to 1e-4
    at these batch sizes (batchnorm over a few values per channel amplifies rounding: the
    CPU's own float32 gradients of MobileNetV2 are 2e-2 of their scale off the float64 ones),
    so the GPU must be as accurate as the CPU: within 4x its error, plus 1e-5. A tensor's
    scale counts as at least 1e-3 of the largest of its kind (a gradient that batchnorm
    cancels is zero up to roundoff)."""
    net = dnnc.load(EXAMPLES / f"{name}.net")
    ref = net.compile(batch=batch, dtype="f64")
    f32 = net.compile(batch=batch)
    dev = net.compile(batch=batch, target="cuda")
    for m in (f32, dev):
        m.params.update_from({k: v.astype(np.float32) for k, v in ref.params.items()})
    rng = np.random.default_rng(0)
    x = {n: rng.standard_normal((batch,) + s) for n, s in net.inputs.items()}
    x32 = {n: v.astype(np.float32) for n, v in x.items()}
    g = ref.graph
    classes = next(iter(net.outputs.values()))[-1]
    labels = {n: rng.integers(0, classes, g.tensors[n].shape) for n in g.labels}

    def check(what, want: dict, cpu: dict, gpu: dict):
        floor = 1e-3 * max(float(np.abs(v).max(initial=0.0)) for v in want.values())
        for k, w in want.items():
            scale = max(float(np.abs(w).max(initial=0.0)), floor, 1e-30)
            e_cpu = float(np.abs(np.asarray(cpu[k], np.float64) - w).max(initial=0.0)) / scale
            e_gpu = float(np.abs(np.asarray(gpu[k], np.float64) - w).max(initial=0.0)) / scale
            assert e_gpu <= 4 * e_cpu + 1e-5, f"{name} {what} {k}: GPU {e_gpu:.1e} off float64, CPU {e_cpu:.1e}"

    check("forward", ref.forward(**x), f32.forward(**x32), dev.forward(**x32))
    runs = [m.loss_and_grad(**(x if m is ref else x32), **labels) for m in (ref, f32, dev)]
    check("loss", *({"loss": np.asarray(r[0])} for r in runs))
    check("gradient", *(r[1] for r in runs))
    opt = "sgd(lr=0.01, momentum=0.9)"
    for _ in range(steps):
        for m in (ref, f32, dev):
            m.train_step(opt, **(x if m is ref else x32), **labels)
    check(f"after {steps} steps", *({k: m.params[k] for k in ref.params} for m in (ref, f32, dev)))


@gpu
@pytest.mark.parametrize("name", ZOO)
def test_gpu_forward_and_three_sgd_steps_equal_the_cpu(name):
    _compare(name, 2 if name in ("resnet18", "mobilenetv2", "vgg11_bn") else 3)


@gpu
@pytest.mark.parametrize("precision,tol", [("tf32", 2e-2), ("bf16", 1e-1)])
@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_gpu_tensor_cores_compute_to_their_precision(name, precision, tol):
    """The forward pass and loss with contractions on the tensor cores against float64 on
    the CPU: off by the operands' rounding (2^-11 for tf32, 2^-8 for bf16, grown through the
    layers), which a wrong fragment layout would exceed by far."""
    net = dnnc.load(EXAMPLES / f"{name}.net")
    batch = 16
    ref = net.compile(batch=batch, dtype="f64")
    dev = net.compile(batch=batch, target="cuda", precision=precision)
    dev.params.update_from({k: v.astype(np.float32) for k, v in ref.params.items()})
    rng = np.random.default_rng(0)
    x = {n: rng.standard_normal((batch,) + s) for n, s in net.inputs.items()}
    classes = next(iter(net.outputs.values()))[-1]
    labels = {n: rng.integers(0, classes, ref.graph.tensors[n].shape) for n in ref.graph.labels}
    x32 = {n: v.astype(np.float32) for n, v in x.items()}
    got = dev.forward(**x32)
    for k, w in ref.forward(**x).items():
        _close(got[k], w, f"{name} {precision} forward {k}", rtol=tol)
    want, got = ref.loss_and_grad(**x, **labels)[0], dev.loss_and_grad(**x32, **labels)[0]
    assert abs(got - want) <= tol * abs(want), (name, precision, got, want)


@gpu
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_gpu_tensor_core_gradients_are_the_cpus_from_the_same_rounding(name, precision):
    """Every gradient of a training program on the tensor cores against the same program on
    the CPU in float64, its contractions staged alike (ir/passes/shared.py: the operands
    rounded where the GPU rounds them, the tensor-core steps as plain arithmetic), which
    leaves only float32 arithmetic and the order of additions between them. Through
    batchnorm that is no small difference: an operand that float32 moves across a rounding
    boundary of tf32 or bf16 moves by the format's step, and the channel sums cancel. So the
    GPU must be as close as the CPU running the same staged program in float32 (measured on
    an H200: LeNet-5 1e-5 of a gradient's scale; ResNet-20's batchnorm gradients 1.1e-1
    (tf32) and 2.3e-1 (bf16), the CPU's own, measured without a GPU, 1.5e-1 and 2.6e-1); a
    wrong fragment layout is off by the gradients' whole scale."""
    import dnnc.ir.passes.shared as sh

    net = dnnc.load(EXAMPLES / f"{name}.net").at_batch(16, training=True)
    progs = {dt: driver.loop_stages(training_program(net, None, dtype=dt, schedule=False))[-1][1]
             for dt in ("f64", "f32")}
    want, cpu = (_run_on_cpu(sh.stage_shared(bind_grid(progs[dt]), precision), 1, dt) for dt in ("f64", "f32"))
    target = get(f"cuda:{precision}")
    arrays = target.arrays()
    ex = driver.Built(driver.from_program(progs["f32"], target), arrays)
    _fill(progs["f32"], arrays, 1)
    ex.run()
    grads = [n for n in want if n.endswith(".grad")]
    assert len(grads) >= 8
    floor = 1e-3 * max(float(np.abs(want[n]).max()) for n in grads)

    def worst(got):
        errs = [(float(np.abs(np.asarray(got[n], np.float64) - want[n]).max())
                 / max(float(np.abs(want[n]).max()), floor, 1e-30), n) for n in grads + ["loss"]]
        return max(errs)

    gpu_err, cpu_err = worst(arrays), worst(cpu)
    print(f"{name} {precision}: worst gradient off float64, GPU {gpu_err}, CPU in float32 {cpu_err}")
    assert gpu_err[0] <= 4 * cpu_err[0] + 1e-4, (gpu_err, cpu_err)


def _mpiexec() -> str | None:
    """mpiexec beside this Python (the mpich wheel installs it there), else on the PATH."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


@gpu
@pytest.mark.skipif(_mpiexec() is None, reason="needs mpi4py and mpiexec: pip install 'dnnc[mpi]'")
def test_gpu_data_parallel_ranks_equal_one_gpu_at_the_global_batch(tmp_path):
    """20 synchronous steps of LeNet-5 on 2 ranks (16 examples each; on a machine of one GPU
    the two share it) against one process on the 32: the gradients cross the host in one
    packed copy each way, so a rank that kept its own would end apart from the other."""
    from dnnc.io import data as datamod
    from dnnc.training.train import train

    ds = datamod.load(None)
    data = tmp_path / "digits.npz"
    np.savez(data, x_train=ds.x_train[:640], y_train=ds.y_train[:640], x_test=ds.x_test[:200],
             y_test=ds.y_test[:200])
    out = tmp_path / "mpi.npz"
    net = EXAMPLES / "lenet5.net"
    cmd = [sys.executable, "-m", "dnnc.cli", "train", str(net), "--data", str(data), "--epochs", "1",
           "--batch", "32", "--seed", "1", "--target", "cuda", "--distributed", "--out", str(out)]
    r = subprocess.run([_mpiexec(), "-n", "2", *cmd], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, DNNC_CACHE="0"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "data parallel on 2 MPI ranks on " in r.stdout, r.stdout
    assert "parameters identical on all 2 ranks" in r.stdout, r.stdout
    one = train(dnnc.load(net), str(data), epochs=1, batch=32, seed=1, out=str(tmp_path / "one.npz"),
                log=lambda *a, **k: None, progress=False, target="cuda")
    got = np.load(out)
    worst = max(float(np.abs(got[k] - v).max()) / max(float(np.abs(v).max()), 1e-30)
                for k, v in one.model.params.items())
    print(f"2 ranks against 1 GPU at the global batch: worst parameter {worst:.1e} of its scale")
    for k, v in one.model.params.items():
        _close(got[k], v, f"{k} after 20 steps on 2 ranks", rtol=1e-3)
    assert not np.array_equal(got["c1.weight"], dnnc.load(net).compile(seed=1).params["c1.weight"])  # it trained


GPU_CHILD = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
import dnnc
from dnnc.driver import stages as pipeline
from test_bounds import BREAKS
pipeline.verify = lambda p: p  # the verifier off: only the run-time checks stand guard
last = pipeline.STAGES.index(pipeline.loop_passes()[-1])
pipeline.STAGES.insert(last + 1, pipeline.Stage("broken", pipeline.LoopPass(BREAKS["grow_outer_loops"]),
                                                ("forward",), "loops", "a broken pass"))
m = dnnc.load({net!r}).compile(batch=2, checks=True, target="cuda")
m.forward(image=np.ones((2, 1, 28, 28), np.float32))
print("no bad access was caught")
"""


@gpu
def test_a_checked_gpu_kernel_stops_at_a_bad_access_and_is_named():
    code = GPU_CHILD.format(tests=str(ROOT / "tests"), net=str(EXAMPLES / "lenet5.net"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "DNNC_CACHE": "0"})
    assert r.returncode != 0 and "no bad access" not in r.stdout, (r.stdout, r.stderr[-2000:])
    assert "dnnc: error: out-of-bounds load from image[2, 0" in r.stdout, r.stdout[:2000]
    assert "kernel lenet5__k_" in r.stderr and "failed" in r.stderr, r.stderr[-2000:]


def _run_program(p: Program, values: dict) -> dict:
    arrays: dict = {}
    ex = driver.Built(driver.from_program(p, CPU), arrays)
    for k, v in values.items():
        arrays[k][...] = v
    ex.run()
    return arrays


def test_a_long_max_over_few_threads_is_split_and_exact():
    t, f = Var("t"), Var("f")
    x = Load("x", (Binary("+", Binary("*", f, Const(5000)), t),))
    body = (Let("m", Const(float("-inf"))), Loop("t", 5000, (Set("m", Binary("max", Scalar("m"), x)),)),
            Store("out", (f,), Scalar("m")))
    p = Program("t", (Buffer("x", (20000,), "input"), Buffer("out", (4,), "output")),
                (Kernel("k", (Loop("f", 4, body),)),))
    split = split_reductions(bind_grid(p))
    assert [k.name for k in split.kernels] == ["k.part", "k"]
    assert split.buffer("k.m.part").shape[0] == 4 and split.buffer("k.m.part").shape[1] > 1
    x = np.random.default_rng(3).standard_normal(20000).astype(np.float32)
    got = _run_program(split, {"x": x})["out"]
    np.testing.assert_array_equal(got, x.reshape(4, 5000).max(axis=1))


def test_register_tiles_take_the_axes_that_share_loads():
    import dnnc.ir.passes.thread_tile as tt

    # a matrix product: each thread gets 4 rows by 4 columns of the output
    i, j, k = Var("i"), Var("j"), Var("k")
    prod = Binary("*", Load("a", (i, k)), Load("b", (k, j)))
    body = (Let("s", Const(0.0)), Loop("k", 64, (Set("s", Binary("+", Scalar("s"), prod)),)),
            Store("c", (i, j), Scalar("s")))
    p = Program("t", (Buffer("a", (256, 64), "input"), Buffer("b", (64, 512), "input"),
                      Buffer("c", (256, 512), "output")), (Kernel("k", (Loop("i", 256, (Loop("j", 512, body),)),)),))
    tt_min, tt.MIN_THREADS = tt.MIN_THREADS, 1
    try:
        tiled = tt.tile_threads(bind_grid(p))
    finally:
        tt.MIN_THREADS = tt_min
    loops, _ = grid_loops(tiled.kernels[0].body)
    assert [(lp.var, lp.extent) for lp in loops] == [("io", 64), ("jo", 128)]
    assert tiled.buffer("k.s.tile").shape == (4, 4)
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((256, 64)).astype(np.float32), rng.standard_normal((64, 512)).astype(np.float32)
    got = _run_program(tiled, {"a": a, "b": b})["c"]
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
    # an elementwise kernel shares nothing: it keeps one output a thread
    copy = Program("t", (Buffer("a", (256, 512), "input"), Buffer("c", (256, 512), "output")),
                   (Kernel("k", (Loop("i", 256, (Loop("j", 512, (Store("c", (i, j), Load("a", (i, j))),)),)),)),))
    assert tt.tile_threads(bind_grid(copy)) == bind_grid(copy)


class _FakeDevice:
    """Device memory as numpy arrays: what DeviceArrays asks of a GPU, without one."""

    def __init__(self):
        self.mem, self.copies = {}, []

    def alloc(self, nbytes, what):
        ptr = 4096 * (len(self.mem) + 1)
        self.mem[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def upload(self, ptr, a):
        self.copies.append(("to device", ptr))
        self.mem[ptr][:] = np.frombuffer(a.tobytes(), np.uint8)

    def download(self, a, ptr):
        self.copies.append(("to host", ptr))
        a[...] = np.frombuffer(self.mem[ptr].tobytes(), a.dtype).reshape(a.shape)

    def free(self, ptr):
        self.mem.pop(ptr, None)


def test_device_arrays_cross_the_bus_only_when_the_host_looks(monkeypatch):
    import dnnc.runtime.cuda as cuda

    fake = _FakeDevice()
    monkeypatch.setattr(cuda, "device", lambda ordinal=0: fake)
    arrays = cuda.DeviceArrays({"w": np.ones(4, np.float32), "x": np.zeros(4, np.float32)})
    pw, px = arrays.pointer("w"), arrays.pointer("x")
    arrays.send(["w", "x"])  # first use: both sent
    assert fake.copies == [("to device", pw), ("to device", px)]
    fake.copies.clear()
    arrays.send(["w", "x"])  # nothing changed on the host: nothing sent
    assert fake.copies == []
    fake.mem[pw][:] = np.frombuffer(np.full(4, 7, np.float32).tobytes(), np.uint8)  # a kernel wrote w
    arrays.written(["w"])
    assert fake.copies == []  # not brought back until someone looks
    np.testing.assert_array_equal(arrays["w"], np.full(4, 7))  # the host reads: brought back once
    np.testing.assert_array_equal(arrays["w"], np.full(4, 7))
    assert fake.copies == [("to host", pw)]
    arrays["x"][...] = 3  # a write through a read: sent before the next run
    fake.copies.clear()
    arrays.send(["w", "x"])
    assert ("to device", px) in fake.copies
    np.testing.assert_array_equal(np.frombuffer(fake.mem[px].tobytes(), np.float32), np.full(4, 3))


def test_a_program_too_big_for_the_gpu_is_refused_before_allocating(monkeypatch):
    import dnnc.runtime.cuda as cuda

    fake = _FakeDevice()
    fake.ordinal = 0
    fake.free_bytes = lambda: 1 << 20  # 1 MiB free
    fake.module = lambda text: pytest.fail("the PTX was loaded")
    monkeypatch.setattr(cuda, "device", lambda ordinal=0: fake)
    net = dnnc.load(EXAMPLES / "lenet5.net")
    from dnnc.driver.unit import Job

    u = driver.run(Job(net.at_batch(512), get("cuda"), "forward", None, "f32"))
    args = [(b.name, b.shape, b.kind) for b in u.program.args]
    with pytest.raises(dnnc.DnncError, match=r"needs .* of GPU memory .* GPU 0 has 1(\.0)? MiB free"):
        cuda.CudaExecutable(None, u.llvm_ir, "lenet5", args, u.workspace, cuda.DeviceArrays())
    assert fake.mem == {}  # nothing was allocated
