"""The compile cache: hits skip LLVM and give the same code; damage is detected and rebuilt;
processes that compile at once share the directory safely."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dnnc
from dnnc.te.optim import Optimizer

ROOT = Path(__file__).resolve().parent.parent
NET = """network t {
    input x: [1, 8, 8]
    label y: 3
    h = conv(x, filters=4, kernel=3, pad=1) |> relu |> maxpool(2)
    o = dense(h, 3)
    loss softmax_cross_entropy(o, y)
}"""


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DNNC_CACHE", "1")
    monkeypatch.setenv("DNNC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run(model, x):
    return model.forward(x=x)["o"]


def test_hit_gives_the_same_code(cache_dir):
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8))
    cold = dnnc.load(NET).compile(batch=2)
    assert cold.compile_seconds["cached"] is False
    assert len(list(cache_dir.glob("*.o"))) == 1
    warm = dnnc.load(NET).compile(batch=2)
    assert warm.compile_seconds["cached"] is True
    np.testing.assert_array_equal(run(cold, x), run(warm, x))
    # the training step too, and the loop nests can still be printed from a cached model
    opt = Optimizer("sgd", 0.1, 0.9)
    cold.executable("train", opt)
    ex = warm.executable("train", opt)
    assert ex.seconds["cached"] is True
    assert "kernel h.conv" in "\n".join(k.name and f"kernel {k.name}" for k in warm.program.kernels)


def test_key_changes_with_what_is_compiled(cache_dir):
    dnnc.load(NET).compile(batch=2)
    dnnc.load(NET).compile(batch=3)
    dnnc.load(NET).compile(batch=2, dtype="f64")
    dnnc.load(NET).compile(batch=2, schedule=False)
    dnnc.load(NET.replace("filters=4", "filters=5")).compile(batch=2)
    assert len(list(cache_dir.glob("*.o"))) == 5


def test_corrupt_entry_is_rebuilt(cache_dir):
    x = np.random.default_rng(1).normal(size=(2, 1, 8, 8))
    good = run(dnnc.load(NET).compile(batch=2), x)
    (obj,) = cache_dir.glob("*.o")
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    again = dnnc.load(NET).compile(batch=2)
    assert again.compile_seconds["cached"] is False  # the checksum caught it
    np.testing.assert_array_equal(run(again, x), good)
    assert dnnc.load(NET).compile(batch=2).compile_seconds["cached"] is True


def test_truncated_metadata_is_rebuilt(cache_dir):
    dnnc.load(NET).compile(batch=2)
    (meta,) = cache_dir.glob("*.json")
    meta.write_text(meta.read_text()[:10])
    assert dnnc.load(NET).compile(batch=2).compile_seconds["cached"] is False


def test_processes_compiling_at_once(cache_dir, tmp_path):
    src = tmp_path / "t.net"
    src.write_text(NET)
    code = ("import dnnc, numpy as np, sys; m = dnnc.load(sys.argv[1]).compile(batch=2); "
            "print(float(m.forward(x=np.ones((2, 1, 8, 8)))['o'].sum()))")
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(src)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert len({o[0] for o in outs}) == 1
    assert not list(cache_dir.glob(".*"))  # no temporary files left behind
    assert dnnc.load(str(src)).compile(batch=2).compile_seconds["cached"] is True
