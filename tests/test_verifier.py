"""The verifier rejects unsafe hand-built IR and accepts the safe version; the driver verifies
after every pass, so a broken pass is a VerifyError (a compiler bug), never wrong code."""
from __future__ import annotations

from pathlib import Path

import pytest

import dnnc
from dnnc.driver.compile import loop_stages
from dnnc.driver import stages as pipeline
from dnnc.base.errors import CompilerBug, DnncError
from dnnc.te.expr import Binary, Const, Load, Reduce, Scalar, Select, Var
from dnnc.ir import Buffer, If, Kernel, Let, Loop, Program, Set, Store
from dnnc.ir.verify import VerifyError, verify
from dnnc.driver.programs import lower_graph

ROOT = Path(__file__).resolve().parent.parent

i, j = Var("i"), Var("j")


def add(a, b):
    return Binary("+", a, Const(b)) if isinstance(b, int) else Binary("+", a, b)


def sub(a, k: int):
    return Binary("-", a, Const(k))


def lt(a, k: int):
    return Binary("<", a, Const(k))


def ge(a, k: int):
    return Binary(">=", a, Const(k))


def x(*idx):
    return Load("x", tuple(idx))


def program(*kernels, extra=()):
    """x: input [4], y: output [4], m: param [4, 3], t: temp [4], plus `extra` buffers."""
    bufs = (Buffer("x", (4,), "input"), Buffer("m", (4, 3), "param"), Buffer("y", (4,), "output"),
            Buffer("t", (4,), "temp")) + tuple(extra)
    ks = tuple(k if isinstance(k, Kernel) else Kernel(f"k{n}", tuple(k), f"k{n}") for n, k in enumerate(kernels))
    return Program("p", bufs, ks)


def loop(var, extent, *body, kind="serial"):
    return Loop(var, extent, tuple(body), kind)


def rejects(p: Program, *fragments: str) -> str:
    with pytest.raises(VerifyError) as info:
        verify(p)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def accepts(p: Program) -> None:
    assert verify(p) is p


# ----------------------------------------------------------------------------- bounds

def test_copy_is_accepted():
    accepts(program([loop("i", 4, Store("y", (i,), x(i)))]))


def test_store_off_by_one_extent():
    rejects(program([loop("i", 5, Store("y", (i,), Const(0.0)))]),
            "kernel k0", "store to y", "index 0 (i) spans [0, 4], outside [0, 3]")


def test_load_off_by_one_extent():
    z = Buffer("z", (5,), "output")
    rejects(program([loop("i", 5, Store("z", (i,), x(i)))], extra=[z]), "load from x", "index 0 (i) spans [0, 4]")
    accepts(program([loop("i", 5, Store("z", (i,), Select(lt(i, 4), x(i), Const(0.0))))], extra=[z]))


def test_load_off_by_one_offset():
    rejects(program([loop("i", 4, Store("y", (i,), x(add(i, 1))))]), "load from x", "(i + 1) spans [1, 4]")


def test_load_negative_offset_without_guard():
    rejects(program([loop("i", 4, Store("y", (i,), x(sub(i, 1))))]), "load from x", "spans [-1, 2]")


def test_negative_offset_with_guard_is_accepted():
    accepts(program([loop("i", 4, If(ge(sub(i, 1), 0), (Store("y", (i,), x(sub(i, 1))),),
                                     (Store("y", (i,), Const(0.0)),)))]))
    # the same guard written on the variable, and a select instead of an if
    accepts(program([loop("i", 4, If(ge(i, 1), (Store("y", (i,), x(sub(i, 1))),)))]))
    accepts(program([loop("i", 4, Store("y", (i,), Select(ge(sub(i, 1), 0), x(sub(i, 1)), Const(0.0))))]))


def test_guard_that_does_not_cover_the_read():
    # i - 1 >= -1 holds always and proves nothing about i - 1 >= 0
    rejects(program([loop("i", 4, If(ge(sub(i, 1), -1), (Store("y", (i,), x(sub(i, 1))),)))]),
            "load from x", "spans [-1, 2]")
    # a guard on the upper end does not bound the lower end
    rejects(program([loop("i", 4, If(lt(sub(i, 1), 4), (Store("y", (i,), x(sub(i, 1))),)))]), "load from x")


def test_read_in_range_only_under_missing_guard():
    """A padded window: x[i + r - 1] is in range only where 0 <= i + r - 1 < 4."""
    r = Var("r")
    idx = sub(add(i, r), 1)
    body = Set("acc", Binary("+", Scalar("acc"), x(idx)))

    def kernel(inner):
        return [loop("i", 4, Let("acc", Const(0.0)), loop("r", 3, *inner), Store("y", (i,), Scalar("acc")))]

    rejects(program(kernel([body])), "load from x", "spans [-1, 4]")
    # only half the guard: still out of range at the top
    rejects(program(kernel([If(ge(idx, 0), (body,))])), "load from x", "spans [0, 4]")
    rejects(program(kernel([If(lt(idx, 4), (body,))])), "load from x", "spans [-1, 3]")
    accepts(program(kernel([If(Binary("and", ge(idx, 0), lt(idx, 4)), (body,))])))


def test_guard_facts_do_not_leak_into_the_else_branch():
    rejects(program([loop("i", 4, If(ge(i, 1), (Store("y", (i,), Const(0.0)),),
                                     (Store("y", (i,), x(sub(i, 1))),)))]), "load from x", "spans [-1, -1]")


def test_guarded_store_outside_the_buffer():
    accepts(program([loop("i", 6, If(lt(i, 4), (Store("y", (i,), Const(1.0)),)))]))
    rejects(program([loop("i", 6, If(lt(i, 5), (Store("y", (i,), Const(1.0)),)))]), "store to y", "spans [0, 4]")


def test_two_dimensional_bounds_checked_per_dimension():
    m = lambda a, b: Load("m", (a, b))  # noqa: E731
    accepts(program([loop("i", 4, Let("s", Const(0.0)), loop("j", 3, Set("s", Binary("+", Scalar("s"), m(i, j)))),
                          Store("y", (i,), Scalar("s")))]))
    rejects(program([loop("i", 4, loop("j", 4, Store("y", (i,), m(i, j))))]), "load from m", "index 1 (j) spans [0, 3]")
    rejects(program([loop("i", 4, Store("y", (i,), Load("m", (i,))))]), "load from m with 1 indices, rank 2")


def test_unbound_index_and_unknown_buffer():
    rejects(program([loop("i", 4, Store("y", (j,), Const(0.0)))]), "store to y: cannot bound index 0 (j)")
    rejects(program([loop("i", 4, Store("z", (i,), Const(0.0)))]), "store to unknown buffer z")
    rejects(program([loop("i", 4, Store("y", (i,), Load("w", (i,))))]), "load from unknown buffer w")


def test_bad_loops():
    rejects(program([loop("i", 0, Store("y", (Const(0),), Const(0.0)))]), "loop i has extent 0")
    rejects(program([loop("i", 4, loop("i", 4, Store("y", (i,), Const(0.0))))]), "loop variable i is already bound")


def test_reduction_must_not_survive_lowering():
    red = Reduce("sum", (("j", 3),), Load("m", (i, j)))
    rejects(program([loop("i", 4, Store("y", (i,), red))]), "a reduction survived lowering")


# ----------------------------------------------------------------------------- registers

def test_register_used_before_declaration():
    rejects(program([loop("i", 4, Store("y", (i,), Scalar("acc")))]), "register acc is used before it is declared")


def test_register_set_before_declaration():
    rejects(program([loop("i", 4, Set("acc", Const(1.0)), Let("acc", Const(0.0)), Store("y", (i,), Scalar("acc")))]),
            "register acc is set before it is declared")


def test_register_used_in_its_own_declaration():
    rejects(program([loop("i", 4, Let("acc", Binary("+", Scalar("acc"), Const(1.0))), Store("y", (i,), Scalar("acc")))]),
            "register acc is used before it is declared")


def test_register_is_local_to_its_block():
    # declared inside the inner loop, used after it
    rejects(program([loop("i", 4, loop("j", 3, Let("acc", Const(0.0))), Store("y", (i,), Scalar("acc")))]),
            "register acc is used before it is declared")
    # declared inside an if, used after it
    rejects(program([loop("i", 4, If(ge(i, 1), (Let("acc", Const(0.0)),)), Store("y", (i,), Scalar("acc")))]),
            "register acc is used before it is declared")
    # declared in one kernel, used in the next
    rejects(program([loop("i", 4, Let("acc", Const(0.0)), Store("y", (i,), Scalar("acc")))],
                    [loop("i", 4, Store("y", (i,), Scalar("acc")))]),
            "kernel k1", "register acc is used before it is declared")


def test_register_declared_first_is_accepted():
    accepts(program([loop("i", 4, Let("acc", Const(0.0)), Set("acc", Binary("+", Scalar("acc"), x(i))),
                          Store("y", (i,), Scalar("acc")))]))


# ----------------------------------------------------------------------------- temporaries

def test_temp_read_before_written():
    rejects(program([loop("i", 4, Store("y", (i,), Load("t", (i,))))]), "t is read before it is written")


def test_temp_read_before_written_in_a_later_kernel():
    rejects(program([loop("i", 4, Store("y", (i,), Load("t", (i,))))],
                    [loop("i", 4, Store("t", (i,), x(i)))]), "kernel k0", "t is read before it is written")


def test_temp_written_by_an_earlier_kernel_is_accepted():
    accepts(program([loop("i", 4, Store("t", (i,), x(i)))],
                    [loop("i", 4, Store("y", (i,), Binary("*", Load("t", (i,)), Const(2.0))))]))


def test_inputs_and_params_need_no_write():
    accepts(program([loop("i", 4, Store("y", (i,), Binary("+", x(i), Load("m", (i, Const(2))))))]))


# ----------------------------------------------------------------------------- parallel loops

def test_parallel_store_independent_of_loop_variable_races():
    rejects(program([loop("i", 4, Store("y", (Const(0),), x(i)), kind="parallel")]),
            "store to y in parallel loop i does not depend on i: iterations race")


def test_parallel_outer_loop_with_store_on_inner_variable_races():
    rejects(program([loop("i", 4, loop("j", 4, Store("y", (j,), x(i))), kind="parallel")]),
            "parallel loop i does not depend on i")


def test_parallel_store_depending_on_loop_variable_is_accepted():
    accepts(program([loop("i", 4, Store("y", (i,), x(i)), kind="parallel")]))
    accepts(program([loop("i", 2, loop("j", 2, Store("y", (add(Binary("*", i, Const(2)), j),), Const(0.0))),
                          kind="parallel")]))


def test_parallel_loop_updating_an_outer_register_races():
    """A sum whose reduction loop is made parallel: every iteration updates one accumulator."""
    rejects(program([loop("i", 4, Let("acc", Const(0.0)),
                          loop("j", 3, Set("acc", Binary("+", Scalar("acc"), Load("m", (i, j)))), kind="parallel"),
                          Store("y", (i,), Scalar("acc")))]),
            "register acc is declared outside parallel loop j and updated in it: iterations race")


def test_parallel_loop_with_its_own_register_is_accepted():
    accepts(program([loop("i", 4, Let("acc", Const(0.0)),
                          loop("j", 3, Set("acc", Binary("+", Scalar("acc"), Load("m", (i, j))))),
                          Store("y", (i,), Scalar("acc")), kind="parallel")]))


def test_serial_loop_may_store_to_one_element():
    accepts(program([loop("i", 4, Store("y", (Const(0),), x(i)))]))


# ----------------------------------------------------------------------------- lowered programs

@pytest.mark.parametrize("name", ["lenet5", "sobel", "custom_op", "blur"])
def test_lowered_examples_verify_at_every_stage(name):
    net = dnnc.load(ROOT / "examples" / f"{name}.net")
    stages = loop_stages(lower_graph(net.at_batch(2)))
    assert [s for s, _ in stages] == ["loops"] + [s.name for s in pipeline.loop_passes()]


def _drop_guards(p: Program) -> Program:
    """A wrong 'optimization': run every guarded body unconditionally."""

    def block(stmts):
        out = []
        for s in stmts:
            if isinstance(s, Loop):
                out.append(Loop(s.var, s.extent, block(s.body), s.kind))
            elif isinstance(s, If):
                out.extend(block(s.then))
            else:
                out.append(s)
        return tuple(out)

    return p.replace_kernels(Kernel(k.name, block(k.body), k.layer) for k in p.kernels)


def _grow_loops(p: Program) -> Program:
    """A wrong 'optimization': one iteration too many in every outermost loop."""
    return p.replace_kernels(
        Kernel(k.name, tuple(Loop(s.var, s.extent + 1, s.body, s.kind) if isinstance(s, Loop) else s for s in k.body),
               k.layer) for k in p.kernels)


def _map_loops(p: Program, fn) -> Program:
    """Rebuild every statement bottom-up; fn(loop) may return a replacement loop."""

    def block(stmts):
        out = []
        for s in stmts:
            if isinstance(s, Loop):
                s = Loop(s.var, s.extent, block(s.body), s.kind)
                out.append(fn(s) or s)
            elif isinstance(s, If):
                out.append(If(s.cond, block(s.then), block(s.orelse)))
            else:
                out.append(s)
        return tuple(out)

    return p.replace_kernels(Kernel(k.name, block(k.body), k.layer) for k in p.kernels)


def _parallel_reduction_loops(p: Program) -> Program:
    """A wrong 'optimization': make every loop that holds a register update parallel."""
    return _map_loops(p, lambda s: Loop(s.var, s.extent, s.body, "parallel")
                      if any(isinstance(b, Set) for b in s.body) else None)


def with_pass(monkeypatch, name: str, fn, position: str = "last") -> None:
    """The driver's stage list with one more loop-IR pass, first or last among them."""
    stages = list(pipeline.STAGES)
    passes = pipeline.loop_passes()
    at = stages.index(passes[0]) if position == "first" else stages.index(passes[-1]) + 1
    stages.insert(at, pipeline.Stage(name, pipeline.LoopPass(fn), pipeline.ALL, "loops", name))
    monkeypatch.setattr(pipeline, "STAGES", stages)


@pytest.mark.parametrize("broken,fragment", [
    (_drop_guards, "load from image"),
    (_grow_loops, "spans [0, 1], outside [0, 0]"),
    (_parallel_reduction_loops, "iterations race"),
])
@pytest.mark.parametrize("position", ["first", "last"])
def test_passes_run_verifies_after_every_pass(monkeypatch, broken, fragment, position):
    with_pass(monkeypatch, "broken", broken, position)
    net = dnnc.load(ROOT / "examples" / "lenet5.net")
    prog = lower_graph(net.at_batch(1), schedule=False)  # scalar reductions: registers to race on
    with pytest.raises(VerifyError) as info:
        loop_stages(prog)
    assert fragment in str(info.value)
    # a verifier failure is a compiler bug, not a user error
    assert isinstance(info.value, CompilerBug) and not isinstance(info.value, DnncError)


def test_passes_run_stops_at_upto(monkeypatch):
    calls = []

    def spy(p):
        calls.append("spy")
        return p

    with_pass(monkeypatch, "spy", spy)
    with_pass(monkeypatch, "broken", _drop_guards)
    prog = dnnc.load(ROOT / "examples" / "lenet5.net").program(batch=1)
    stages = loop_stages(prog, upto="spy")
    assert [n for n, _ in stages][-1] == "spy" and calls == ["spy"]
    with pytest.raises(VerifyError):
        loop_stages(prog)


def test_compile_refuses_a_broken_pass(monkeypatch):
    with_pass(monkeypatch, "broken", _drop_guards)
    net = dnnc.load(ROOT / "examples" / "lenet5.net")
    with pytest.raises(VerifyError):
        net.compile(batch=1)


def test_verify_rejects_broken_lowering_directly():
    prog = dnnc.load(ROOT / "examples" / "sobel.net").program(batch=1)
    accepts(prog)
    rejects(_drop_guards(prog), "kernel gradients", "load from img")
