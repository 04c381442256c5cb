"""Convolution schedules by shape class: the default-scheduled program computes what the plain
loop nests (`schedule=False`) and an independent numpy convolution compute, at batch 1 and 3,
and the default schedule has the form intended for each class (schedule/default.py)."""
from __future__ import annotations

import numpy as np
import pytest

import dnnc
from dnnc.driver.compile import lower
from dnnc.driver.programs import job_for, program_of
from dnnc.ir import Loop
from dnnc.schedule.steps import Pack, Tile, parse_step
from reference import conv2d, relu

# name: (channels, height, width, filters, kernel, stride, pad, groups); small channel counts
CASES = {
    "stem7x7s2": (3, 29, 27, 32, 7, 2, 3, 1),  # the RGB stem: few channels, stride 2
    "3x3s2": (16, 14, 13, 32, 3, 2, 1, 1),
    "1x1s1": (16, 5, 19, 32, 1, 1, 0, 1),
    "1x1s2": (16, 14, 13, 32, 1, 2, 0, 1),
    "dw3x3s1": (32, 10, 19, 32, 3, 1, 1, 32),
    "dw3x3s2": (32, 13, 10, 32, 3, 2, 1, 32),
    "small7x7": (32, 7, 7, 32, 3, 1, 1, 1),
    "ragged": (8, 11, 13, 48, 3, 1, 1, 1),  # 48 filters, 13 columns: not multiples of 32 or 16
    "wino7x7": (128, 7, 7, 128, 3, 1, 1, 1),  # Winograd (te/conv.py's rule): 4 tiles a row
}


def source(channels, h, w, filters, kernel, stride, pad, groups) -> str:
    return f"""network t {{
    input x: [{channels}, {h}, {w}]
    y = conv(x, filters={filters}, kernel={kernel}, stride={stride}, pad={pad}, groups={groups}) |> relu
}}"""


def schedule_of(net, batch: int = 1) -> list:
    """The steps the driver's `schedule` stage chose."""
    return list(lower(job_for(net.at_batch(batch)), upto="schedule")[-1][1].schedule)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_default_schedule_computes_the_convolution(case, batch):
    c, h, w, f, k, s, p, gr = CASES[case]
    net = dnnc.load(source(*CASES[case]))
    tuned, naive = net.compile(batch=batch, threads=1), net.compile(batch=batch, schedule=False, threads=1)
    naive.params.update_from(tuned.params)
    x = np.random.default_rng(batch).normal(size=(batch, c, h, w)).astype(np.float32)
    got, plain = tuned.forward(x=x)["y"], naive.forward(x=x)["y"]
    weight = [v for n, v in tuned.params.items() if n.endswith("weight")][0]
    bias = [v for n, v in tuned.params.items() if n.endswith("bias")][0]
    want = relu(conv2d(x, weight, bias, s, p, gr))
    np.testing.assert_allclose(got, plain, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def tile_of(steps, tensor: str) -> Tile:
    return next(t for t in steps if isinstance(t, Tile) and t.tensor == tensor)


@pytest.mark.parametrize("case", ["stem7x7s2", "3x3s2", "1x1s2", "small7x7", "ragged"])
def test_strided_small_and_few_channel_convs_take_lanes_along_filters(case):
    """Lanes along f over weights packed filters-last, a register tile of pixels along j, and
    the loop over filter vectors outermost, so one panel of weights serves every pixel."""
    net = dnnc.load(source(*CASES[case]))
    steps = schedule_of(net)
    t = tile_of(steps, "y")
    assert (t.vector, t.unroll, t.outermost) == ("f", "j", True), t
    assert t.width * t.vectors * 1 <= CASES[case][3] and t.vectors * t.factor <= 14
    assert any(isinstance(p, Pack) and p.reader == "y" and p.perm == (1, 2, 3, 0) for p in steps)
    assert parse_step(str(t)) == t and "reorder(fo, ..., jo, ji, " in str(t.primitives()[-2:]) + "".join(
        map(str, t.primitives()))
    kernel = next(k for k in program_of(job_for(net.at_batch(3))).kernels if k.name.startswith("y"))
    top = [s for s in kernel.body if isinstance(s, Loop)][-1]  # after the weight pack's loops
    assert top.var == "fo"  # outside the batch and every spatial loop


@pytest.mark.parametrize("case", ["1x1s1", "dw3x3s1", "dw3x3s2"])
def test_unit_stride_and_depthwise_convs_keep_lanes_along_j(case):
    """A 1x1 stride-1 conv is a GEMM with contiguous pixels, and a depthwise conv has no
    reduction over channels to reuse a broadcast input: lanes stay along the output row."""
    t = tile_of(schedule_of(dnnc.load(source(*CASES[case]))), "y")
    assert t.vector == "j" and not t.outermost, t


def test_outermost_prints_replays_and_refuses_panel():
    t = parse_step("tile(c.conv, vector=f:16x2, unroll=j:7, outermost, parallel)")
    assert t.outermost and str(t) == "tile(c.conv, vector=f:16x2, unroll=j:7, outermost, parallel)"
    assert "reorder(fo, ..., jo, ji, fk, fi)" in ", ".join(map(str, t.primitives()))
    plain = parse_step("tile(c.conv, vector=j:16, unroll=f:4)")
    assert "reorder(fo, jo, fi, ji)" in ", ".join(map(str, plain.primitives()))  # unchanged
    from dnnc.base.errors import DnncError
    with pytest.raises(DnncError, match="drop panel"):
        parse_step("tile(c.conv, vector=f:16, unroll=j:7, panel, outermost)")


def test_a_narrow_winograd_product_takes_lanes_along_filters():
    """Winograd's product m[a, b, n, f, h, w] = sum(k) u[a, b, f, k] * v[a, b, n, k, h, w] at
    7x7 has rows of 4 tiles: the lanes go along f (u packed with f last, in panels), 4 tiles
    in registers; test_default_schedule_computes_the_convolution checks its values."""
    steps = schedule_of(dnnc.load(source(*CASES["wino7x7"])))
    t = tile_of(steps, "y.conv.wino_m")
    assert (t.vector, t.width, t.unroll, t.factor, t.outermost) == ("f", 16, "tw", 4, True), t
    pack = next(s for s in steps if isinstance(s, Pack) and s.reader == "y.conv.wino_m")
    assert pack.tensor == "y.conv.wino_u" and pack.perm == (0, 1, 3, 2), pack
