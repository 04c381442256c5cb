"""Faults while training: Ctrl-C, a killed process, two processes sharing the compile cache.

- Ctrl-C is acted on between steps: the checkpoint it writes resumes bit for bit.
- A process killed (SIGKILL) while it writes a checkpoint leaves the previous one whole.
- Two `dnnc train` processes compiling the same network at once share the disk cache.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from dnnc.io import data as datamod
from dnnc.base.fileio import atomic_write

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_train import assert_same_arrays, checkpoint_arrays, write_npz  # noqa: E402

LENET300 = "examples/lenet300.net"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("faults") / "small.npz", datamod.embedded())


def start(*args, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dnnc.cli", *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, **kw)


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 120) -> list[str]:
    seen, t0 = [], time.monotonic()
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
        assert time.monotonic() - t0 < timeout, seen
    raise AssertionError(f"the process ended before printing {prefix!r}: {seen}")


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dnnc.cli", *map(str, args)], cwd=ROOT, text=True,
                          capture_output=True, timeout=300)


# ----------------------------------------------------------------------------- Ctrl-C

def test_ctrl_c_writes_a_checkpoint_that_resumes_bit_for_bit(tmp_path, small):
    common = [LENET300, "--data", small, "--epochs", 60, "--batch", 32, "--seed", 5]
    direct, stopped, resumed = tmp_path / "direct.npz", tmp_path / "stopped.npz", tmp_path / "resumed.npz"
    with ThreadPoolExecutor(1) as pool:
        whole = pool.submit(run, "train", *common, "--out", direct)  # the same run, uninterrupted
        proc = start("train", *common, "--out", stopped)
        wait_for_line(proc, "epoch   2/60")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert whole.result().returncode == 0
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "epoch  60/60" not in out, err
    assert f"interrupted: checkpoint written to {stopped}" in out
    assert f"continue with --resume {stopped}" in out
    r = run("train", *common, "--resume", stopped, "--out", resumed)
    assert r.returncode == 0, r.stderr
    assert_same_arrays(checkpoint_arrays(direct), checkpoint_arrays(resumed))


# ----------------------------------------------------------------------------- SIGKILL while writing

WRITER = """
import sys
import numpy as np
from dnnc.base.fileio import save_npz
path = sys.argv[1]
for version in range(1, 10**6):
    save_npz(path, {"a": np.full(1 << 21, version, np.float32), "b": np.full(3, version, np.int64)})
    print(version, flush=True)
"""


def _version(path: Path) -> int:
    """The version a checkpoint holds; it must be whole: every array of one version."""
    with np.load(path, allow_pickle=False) as z:
        a, b = z["a"], z["b"]
    assert a.size == 1 << 21 and b.size == 3
    assert (a == a[0]).all() and (b == b[0]).all() and int(a[0]) == int(b[0]), "a torn checkpoint"
    return int(b[0])


def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "ck.npz"
    rng = np.random.default_rng(0)
    last = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()  # one version written: the kill lands in a later write
        assert line.strip().isdigit(), line
        time.sleep(rng.uniform(0.0, 0.05))
        proc.kill()
        proc.wait()
        written = [int(x) for x in [line, *proc.stdout.read().split()]]
        v = _version(path)
        assert v >= max(written) and v > 0  # the newest completed write, or one just renamed
        last = v
    # a later write removes the temporary files the killed writers left behind
    atomic_write(tmp_path / "ck.npz", (tmp_path / "ck.npz").read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]
    assert _version(path) == last


def test_a_killed_training_run_resumes_from_its_last_checkpoint(tmp_path, small):
    ck = tmp_path / "ck.npz"
    proc = start("train", LENET300, "--data", small, "--epochs", 200, "--batch", 32, "--out", ck)
    wait_for_line(proc, "epoch   3/200")
    time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, perhaps in the middle of a checkpoint
    proc.communicate()
    r = run("train", LENET300, "--data", small, "--epochs", 4, "--batch", 32, "--resume", ck,
            "--out", tmp_path / "after.npz")
    assert r.returncode == 0, r.stderr
    assert "final test accuracy" in r.stdout


# ----------------------------------------------------------------------------- a shared cache

def test_two_training_runs_share_the_compile_cache(tmp_path, small):
    """Both compile the same programs into one cache directory at once, twice over: the
    second pair loads what the first stored, and every run trains the same bits."""
    env = {"DNNC_CACHE": "1", "DNNC_CACHE_DIR": str(tmp_path / "cache")}
    outs, counts = [], []
    for round_ in range(2):
        procs = [start("train", LENET300, "--data", small, "--epochs", 1, "--batch", 32,
                       "--out", tmp_path / f"r{round_}p{k}.npz", env=env) for k in range(2)]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
        outs += [tmp_path / f"r{round_}p{k}.npz" for k in range(2)]
        entries = list((tmp_path / "cache").iterdir())
        assert entries and not [e for e in entries if e.name.endswith(".tmp")]
        counts.append(len(entries))
    assert counts[0] == counts[1], "the second pair compiled anew instead of loading the cache"
    first = checkpoint_arrays(outs[0])
    for o in outs[1:]:
        assert_same_arrays(first, checkpoint_arrays(o), f"{o.name}: ")
