"""LeNet-5 trained on the embedded digits in every parallel mode: time per epoch and accuracy.

Each configuration is one `dnnc train` run (15 epochs, the network's train { } settings unless
--batch is given); the epoch time is the median over epochs 2.. (the first includes warm-up).
MPI rows need `pip install 'dnnc[mpi]'`. Usage:

    python benchmarks/parallel_training.py [--epochs 15] [--batch B]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

NET = Path(__file__).resolve().parent.parent / "examples" / "lenet5.net"
EPOCH = re.compile(r"epoch\s+\d+/\d+\s+train loss \S+\s+(?:test loss \S+\s+accuracy\s+\S+%\s+)?(\S+) s")


def mpiexec() -> str | None:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def run(cmd: list[str]) -> tuple[float, float]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=dict(os.environ))
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    # seconds per epoch: from images/s where the line has it (more digits), else as printed
    rates = [float(x) for x in re.findall(r"(\d+) images/s", r.stdout)]
    examples = int(re.search(r"(\d[\d,]*) train /", r.stdout).group(1).replace(",", ""))
    times = [examples // batch_of(r.stdout) * batch_of(r.stdout) / v for v in rates] if rates else \
        [float(m.group(1)) for m in EPOCH.finditer(r.stdout)]
    acc = float(re.search(r"final test accuracy (\S+)%", r.stdout).group(1))
    return statistics.median(times[1:] or times), acc


def batch_of(stdout: str) -> int:
    return int(re.search(r"batch (\d+)", stdout).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int)
    args = ap.parse_args()
    base = [sys.executable, "-m", "dnnc.cli", "train", str(NET), "--epochs", str(args.epochs), "--out",
            "/tmp/dnnc_parallel_bench.npz"] + (["--batch", str(args.batch)] if args.batch else [])
    rows = [("1 thread", base + ["--threads", "1"]),
            ("2 threads, parallel loops", base + ["--threads", "2"]),
            ("2 threads, data parallel (synchronous)", base + ["--threads", "2", "--data-parallel"]),
            ("2 threads, Hogwild (asynchronous)", base + ["--threads", "2", "--async"])]
    mpi = mpiexec()
    if mpi:
        rows += [("2 MPI ranks, all-reduce (synchronous)", [mpi, "-n", "2"] + base + ["--threads", "1", "--distributed"]),
                 ("3 MPI ranks, 1 parameter server + 2 workers", [mpi, "-n", "3"] + base + ["--threads", "1",
                                                                                           "--distributed=ps"])]
    print(f"LeNet-5, {args.epochs} epochs on the embedded digits, batch {args.batch or 'from the network'}")
    print(f"{'configuration':46s} {'s/epoch':>8s} {'speed-up':>9s} {'accuracy':>9s}")
    first = None
    for name, cmd in rows:
        t, acc = run(cmd)
        first = first or t
        print(f"{name:46s} {t:8.3f} {first / t:8.2f}x {acc:8.2f}%")


if __name__ == "__main__":
    main()
