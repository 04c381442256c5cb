"""Training in parallel: data-parallel replicas on threads, Hogwild, and MPI ranks.

Synchronous modes are checked against one process training on the whole batch (float32
summation order aside) and for giving the same bits on every run; the MPI run starts real
processes with mpiexec, and wrong launches must fail on every rank without hanging.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dnnc
from dnnc.io import data as datamod
from dnnc.base.errors import DnncError
from dnnc.training.train import train

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "examples" / "lenet300.net"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """640 training digits (20 batches of 32) and 200 test digits, as an .npz."""
    ds = datamod.load(None)
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x_train=ds.x_train[:640], y_train=ds.y_train[:640], x_test=ds.x_test[:200],
             y_test=ds.y_test[:200])
    return path


def quiet(*a, **k):
    pass


def run(mode, data, tmp_path, threads=2, **kw):
    out = tmp_path / f"{mode}.npz"
    r = train(dnnc.load(MLP), str(data), epochs=1, batch=32, seed=1, out=str(out), log=quiet, progress=False,
              threads=threads, mode=mode, **kw)
    return r, {k: v.copy() for k, v in r.model.params.items()}


def test_data_parallel_equals_one_batch_and_repeats_bit_for_bit(small_data, tmp_path):
    _, single = run("single", small_data, tmp_path, threads=1)
    _, a = run("data", small_data, tmp_path)
    _, b = run("data", small_data, tmp_path)
    for k in single:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # fixed reduction order
        np.testing.assert_allclose(a[k], single[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert not np.array_equal(a["h1.weight"], dnnc.load(MLP).compile(seed=1).params["h1.weight"])  # it trained


def test_data_parallel_needs_a_batch_that_divides(small_data, tmp_path):
    with pytest.raises(DnncError, match=r"the batch \(32\) must divide evenly among 3 threads"):
        run("data", small_data, tmp_path, threads=3)


@pytest.mark.parametrize("mode,flag", [("data", "--data-parallel"), ("async", "--async"), ("ps", "--distributed=ps")])
def test_the_cpu_threads_modes_refuse_a_gpu_before_any_work(mode, flag, small_data, tmp_path):
    with pytest.raises(DnncError, match=f"{flag} trains on the CPU; on GPUs, train data parallel with mpiexec"):
        run(mode, small_data, tmp_path, target="cuda")


def test_hogwild_trains(small_data, tmp_path):
    r, params = run("async", small_data, tmp_path)
    assert all(np.isfinite(v).all() for v in params.values())
    assert r.evaluation.accuracy > 0.5  # 20 lock-free steps on two threads, well above chance


# ----------------------------------------------------------------------------- MPI

def _mpiexec() -> str | None:
    """mpiexec beside this Python (the mpich wheel installs it there), else on the PATH."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(_mpiexec() is None, reason="needs mpi4py and mpiexec: pip install 'dnnc[mpi]'")


def _mpirun(n_or_spec, timeout=240, cwd=None):
    spec = n_or_spec if isinstance(n_or_spec, list) else ["-n", str(n_or_spec)]
    env = dict(os.environ, DNNC_CACHE="0")
    return subprocess.run([_mpiexec(), *spec], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@needs_mpi
def test_two_ranks_hold_identical_parameters_equal_to_one_process(small_data, tmp_path):
    """20 synchronous steps on 2 ranks (16 examples each) against one process on the 32."""
    out = tmp_path / "mpi.npz"
    cmd = [sys.executable, "-m", "dnnc.cli", "train", str(MLP), "--data", str(small_data), "--epochs", "1",
           "--batch", "32", "--seed", "1", "--threads", "1", "--distributed", "--out", str(out)]
    r = _mpirun(["-n", "2", *cmd])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "data parallel on 2 MPI ranks" in r.stdout
    assert "parameters identical on all 2 ranks" in r.stdout
    n = sum(v.size for v in dnnc.load(MLP).compile().params.values())
    assert re.search(rf"all-reduce [0-9.]+ ms of a [0-9.]+ ms step \(\d+%\), {4 * n:,} bytes of gradients a rank",
                     r.stdout), r.stdout
    assert r.stdout.count("final test accuracy") == 1  # rank 0 alone speaks
    _, single = run("single", small_data, tmp_path, threads=1)
    got = np.load(out)
    for k in single:
        np.testing.assert_allclose(got[k], single[k], rtol=1e-4, atol=1e-5, err_msg=k)


@needs_mpi
def test_ranks_started_with_different_networks_all_fail_without_hanging(small_data, tmp_path):
    other = tmp_path / "other.net"
    other.write_text(MLP.read_text().replace("dense(h1, 100)", "dense(h1, 90)"))
    base = [sys.executable, "-m", "dnnc.cli", "train"]
    rest = ["--data", str(small_data), "--epochs", "1", "--batch", "32", "--distributed", "--out",
            str(tmp_path / "x.npz")]
    r = _mpirun(["-n", "1", *base, str(MLP), *rest, ":", "-n", "1", *base, str(other), *rest], timeout=120)
    assert r.returncode != 0
    # one error from each rank (their lines may interleave in the shared stderr)
    assert r.stderr.count("error: rank 1 was started with a different network file or settings") == 2, r.stderr
    assert "Traceback" not in r.stderr


def test_distributed_without_mpi4py_is_one_clear_line(tmp_path):
    """An mpi4py that cannot be imported (as when the extra is not installed)."""
    fake = tmp_path / "mpi4py"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no mpi4py here')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "train", str(MLP), "--distributed", "--epochs", "1"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "error: --distributed needs mpi4py and an MPI library: pip install 'dnnc[mpi]' "
        "(mpi4py and the mpich wheel, which puts mpiexec on the PATH)"), lines


def _ps_cmd(data, out, *extra):
    return [sys.executable, "-m", "dnnc.cli", "train", str(MLP), "--data", str(data), "--epochs", "2",
            "--batch", "32", "--threads", "1", "--distributed=ps", "--out", str(out), *extra]


def _accuracy(stdout: str) -> float:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("final test accuracy"))
    return float(line.split()[3].rstrip("%"))


@needs_mpi
def test_parameter_servers_train_with_two_servers(small_data, tmp_path):
    out = tmp_path / "ps.npz"
    r = _mpirun(["-n", "4", *_ps_cmd(small_data, out, "--servers", "2", "--staleness", "2")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "parameter servers: 2 server(s), 2 worker(s), staleness 2" in r.stdout
    assert _accuracy(r.stdout) > 30  # 10 classes: chance is 10%
    assert set(np.load(out).files) >= set(dnnc.load(MLP).params)


@needs_mpi
def test_a_dead_worker_does_not_stop_the_parameter_server(small_data, tmp_path):
    """Worker rank 2 dies after 5 pushes; the server says so and finishes with the other."""
    out = tmp_path / "ps.npz"
    env_spec = ["-genv", "DNNC_PS_FAIL_AFTER", "2:5", "-genv", "DNNC_PS_FAILURE_SECONDS", "2"]
    r = _mpirun(["-disable-auto-cleanup", *env_spec, "-n", "3", *_ps_cmd(small_data, out)], timeout=180)
    assert "worker rank 2 has been silent for 2 s after 5 updates: carrying on with 1 worker(s)" in r.stdout, \
        r.stdout + r.stderr
    assert _accuracy(r.stdout) > 30
    ck = np.load(out)
    assert all(np.isfinite(ck[k]).all() for k in dnnc.load(MLP).params)
