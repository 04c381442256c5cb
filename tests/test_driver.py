"""The driver: one stage list for every program, pure stages, and a target interface a second
machine plugs into without touching the front or middle end."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dnnc
from dnnc.base.errors import DnncError
from dnnc.driver import stages as pipeline
from dnnc.driver.compile import lower, run
from dnnc.driver.unit import Job
from dnnc.schedule.machine import Machine
from dnnc.schedule.steps import Schedule, Tile, parse_step
from dnnc.target import CPU, get
from dnnc.target.cpu import CpuTarget
from dnnc.te.optim import Optimizer

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "examples" / "lenet5.net"


def job(kind="forward", batch=2, **more):
    net = dnnc.load(LENET)
    g = net.at_batch(batch, training=kind in ("grad", "train"))
    opt = Optimizer("sgd", 0.1, 0.9) if kind in ("train", "update") else None
    return Job(g, CPU, kind, opt, **more)


def test_training_adds_stages_by_name_and_never_reorders_them():
    order = [s.name for s in pipeline.STAGES]
    forward = [n for n, _ in lower(job("forward"))]
    train = [n for n, _ in lower(job("train"))]
    for ran in (forward, train):
        assert ran == [n for n in order if n in ran]  # a subsequence of THE list
    assert set(train) - set(forward) == {"normalize", "state_updates", "backward", "update"}
    assert set(forward) - set(train) == {"sparsify", "fold", "copies", "fuse_elementwise", "weights"}
    assert forward[-1] == train[-1] == "llvm"


def test_list_stages_prints_the_stage_list_in_order():
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "ir", "--list-stages"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    printed = [line.split()[0] for line in r.stdout.splitlines()]
    assert printed == pipeline.names()
    assert printed[:3] == ["ast", "graph", "te"] and printed[-4:] == ["llvm", "llvm-opt", "asm", "ptx"]


@pytest.mark.parametrize("kind", ["forward", "train"])
def test_each_stage_leaves_the_unit_it_was_given_unchanged(kind):
    """Stages are pure: running every stage again on each input gives the same output, and
    the inputs still print as they did."""
    units = lower(job(kind))
    before = None
    for name, u in units:
        if before is not None:
            snapshot = (repr(before.groups), dict(before.shapes), before.buffers, before.schedule)
            stage = next(s for s in pipeline.STAGES if s.name == name)
            again = stage.run(before)
            assert (repr(before.groups), dict(before.shapes), before.buffers, before.schedule) == snapshot, name
            assert repr(again.groups) == repr(u.groups) and again.buffers == u.buffers, name
        before = u


def test_the_model_and_dnnc_ir_compile_the_same_program():
    """One list read by every consumer: the model's program, `dnnc ir` and the driver agree."""
    net = dnnc.load(LENET)
    m = net.compile(batch=2, threads=1)
    u = run(Job(net.at_batch(2), CPU))
    assert m.llvm_ir == u.llvm_ir
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "ir", str(LENET), "--batch", "2", "--stage", "llvm"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == u.llvm_ir.strip()


def test_a_target_with_another_machine_plugs_in():
    """A target with 256-bit vectors: the default schedule's tiles are 8 lanes wide, with no
    change above the interface, and the program computes the same values."""

    class Avx2(CpuTarget):
        name = "avx2-model"
        machine = Machine("avx2-model", vector_bits=256, l2_bytes=1 << 18, cores=1, parallel_flops=10**12)

    net = dnnc.load(LENET)
    wide, narrow = net.compile(batch=3, threads=1), net.compile(batch=3, threads=1, target=Avx2())
    widths = {s.width for s in narrow.program.schedule if isinstance(s, Tile)}
    assert widths <= {4, 8} and 8 in widths
    assert 16 in {s.width for s in wide.program.schedule if isinstance(s, Tile)}
    narrow.params.update_from(wide.params)
    x = np.random.default_rng(0).random((3, 1, 28, 28), np.float32)
    np.testing.assert_allclose(narrow.forward(image=x)["logits"], wide.forward(image=x)["logits"], rtol=1e-5,
                               atol=1e-5)


def test_an_unknown_target_is_one_clear_error():
    with pytest.raises(DnncError, match=r"unknown target 'tpu' \(targets: cpu, cuda; cuda\[:N\]\[:fp32\|tf32\|bf16\]\)"):
        get("tpu")
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "run", str(LENET), "--target", "tpu", "--input", "x.npy"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "invalid choice: 'tpu'" in r.stderr and "Traceback" not in r.stderr


def test_no_schedule_is_one_schedule_object():
    """--no-schedule keeps plain nests and no fusion; a user's step still applies."""
    plain = run(job(schedule=Schedule((), False)))
    assert plain.schedule == () and all("+" not in k.name for k in plain.program.kernels)
    step = Tile("c1.conv", "j", 8)
    mine = run(job(schedule=Schedule((step,), False)))
    assert mine.schedule == (step,)


def test_a_step_for_a_tensor_no_statement_writes_is_refused():
    with pytest.raises(DnncError, match="no statement writes c9"):
        run(job(schedule=Schedule((Tile("c9", "j", 8),))))


def test_the_printed_schedule_shows_each_tile_as_primitives_and_replays():
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "ir", str(LENET), "--stage", "schedule", "--batch", "4"],
                       capture_output=True, text=True, cwd=ROOT)
    tiles = [line for line in r.stdout.splitlines() if line.startswith("tile(")]
    assert tiles and all("  # = split(" in line and "vectorize(" in line for line in tiles)
    steps = tuple(parse_step(line) for line in tiles)
    replayed = run(job(batch=4, schedule=Schedule(steps)))
    assert [s for s in replayed.schedule if isinstance(s, Tile)] == list(steps)


def test_compile_profile_times_every_stage_and_the_load():
    from dnnc.driver.compile import profile
    from dnnc.runtime import jit

    memo = dict(jit._objects)
    times = profile(job("train"))
    assert [n for n, _ in times] == [n for n, _ in lower(job("train"))] + ["load"]
    assert all(t >= 0 for _, t in times) and dict(times)["load"] > 0
    assert dict(jit._objects) == memo  # the process's memo of machine code is left as it was
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "bench", str(LENET), "--batch", "4", "--compile-profile"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rows = [line.rsplit(None, 3)[0].strip() for line in r.stdout.splitlines()[2:-1]]  # name, time, unit, share
    mine = [n for n, _ in lower(job("forward", batch=4))] + ["load"]
    # then the prepare program's (LeNet-5's packed conv weights)
    assert rows == mine + [f"prepare: {n}" for n, _ in lower(job("prepare", batch=4))] + ["prepare: load"]


BN_NET = """
network bn {
    input image: [3, 10, 10]
    a = conv(image, filters=8, kernel=3, pad=1, bias=false) |> batchnorm |> relu
    b = conv(a, filters=8, kernel=3, pad=1, bias=false) |> batchnorm
    r = add(a, b) |> relu
    p = global_avgpool(r)
    logits = dense(p, 5)
}
"""


def test_batchnorm_and_a_residual_add_run_in_the_convolutions_epilogue():
    """Inference: the running statistics' copies are dropped (the `copies` stage), so the
    batchnorm, the residual add and the ReLU fuse into the conv that feeds them, and the
    program computes what the plain nests compute."""
    net = dnnc.load(BN_NET)
    fused = net.compile(batch=3, threads=1)
    names = [k.name for k in fused.program.kernels]
    assert "a.conv+batchnorm+relu" in names and any(n.startswith("b.conv+batchnorm") and "add" in n for n in names)
    rng = np.random.default_rng(1)
    for n in fused.states:
        fused.states[n] = rng.uniform(0.5, 1.5, fused.states[n].shape)  # running statistics other than 0 and 1
    plain = net.compile(batch=3, threads=1, schedule=False)
    plain.params.update_from(fused.params)
    plain.states.update_from(fused.states)
    x = rng.normal(size=(3, 3, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(fused.forward(image=x)["logits"], plain.forward(image=x)["logits"], rtol=1e-4,
                               atol=1e-5)
