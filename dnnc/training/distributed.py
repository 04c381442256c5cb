"""Synchronous data parallelism across processes and machines on MPI (mpi4py).

`mpiexec -n N dnnc train NET --distributed`: every rank loads the network and its own copy of
the data set (nothing is sent but gradients), takes the same seeded order of examples, and
computes the gradient of its shard (rows r*B/N to (r+1)*B/N) of every global batch of B. The
gradients of all parameters lie in one flat array, so one Allreduce sums them; every rank
then divides by N and applies the same update, so all ranks hold the same parameters after
every step. Rank 0 alone prints and writes checkpoints.

On GPUs (`--target cuda`) each process takes the next GPU of its host (`Target.for_rank`);
the gradients lie in one device block as in the flat array, so a step copies them to the
host once, all-reduces them there, and copies the sum back once.
"""
from __future__ import annotations

import hashlib
import socket
import time

import numpy as np

from ..api import Model
from ..base.errors import DnncError
from ..te.optim import HYPER, Optimizer
from ..target import get as get_target
from ..te.names import grad_name


SKIP_FINALIZE = False  # set when a peer died: MPI_Finalize would wait for it forever


def world():
    """MPI's COMM_WORLD, or a clear error when mpi4py (or an MPI library) is missing.

    MPI is finalized at exit by dnnc itself, and not at all once a peer is known to have
    died (a parameter-server run carries on without it, and must then still exit)."""
    try:
        import mpi4py

        mpi4py.rc.finalize = False
        from mpi4py import MPI
    except ImportError:
        raise DnncError("--distributed needs mpi4py and an MPI library: pip install 'dnnc[mpi]' "
                        "(mpi4py and the mpich wheel, which puts mpiexec on the PATH)") from None
    except RuntimeError as e:  # mpi4py present, no MPI library it can load
        raise DnncError(f"--distributed: mpi4py cannot load an MPI library ({e})") from None
    import atexit

    atexit.register(_finalize)
    return MPI.COMM_WORLD


def _finalize() -> None:
    from mpi4py import MPI

    if not SKIP_FINALIZE and MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()


def check_same_run(comm, *parts: str) -> None:
    """Every rank must train the same network with the same settings: a mismatch is one
    error line on every rank (all ranks take part in the check, so none waits forever)."""
    mine = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    every = comm.allgather(mine)
    odd = [r for r, h in enumerate(every) if h != every[0]]
    if odd:
        raise DnncError(f"rank {odd[0]} was started with a different network file or settings than rank 0 "
                        f"(every rank must run the same command)")


def local_rank(comm) -> int:
    """This process's rank among those of the run on its host."""
    from mpi4py import MPI

    return comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()


def flat_views(flat: np.ndarray, g, names: list[str], sizes: list[int]) -> dict[str, np.ndarray]:
    """Each named tensor as a view of its stretch of one flat array (in order)."""
    out, k = {}, 0
    for p, n in zip(names, sizes):
        out[p] = flat[k:k + n].reshape(g.tensors[p].shape)
        k += n
    return out


class Distributed:
    """A master model at the shard's batch whose gradients live in one flat array."""

    def __init__(self, net, global_batch: int, optimizer: Optimizer, comm, seed: int, target="cpu",
                 **compile_options):
        self.comm, self.rank, self.size = comm, comm.Get_rank(), comm.Get_size()
        if global_batch % self.size:
            raise DnncError(f"the batch ({global_batch}) must divide evenly among {self.size} ranks")
        self.shard = global_batch // self.size
        g = net.at_batch(self.shard, training=True)
        trainable = [p for p in g.params if p not in g.fixed]
        sizes = [int(np.prod(g.tensors[p].shape)) for p in trainable]
        # the gradients, then the loss: one buffer for one Allreduce
        self.flat = np.zeros(sum(sizes) + 1, np.float32)
        share = {grad_name(p): v for p, v in flat_views(self.flat, g, trainable, sizes).items()}
        self.target = get_target(target).for_rank(local_rank(comm))
        self.master = Model(net, self.shard, seed, share=share, target=self.target, **compile_options)
        self.grads = self.target.packed(self.master.buffers, list(share), self.flat)
        self.places = comm.allgather((socket.gethostname(), getattr(self.target, "ordinal", None)))
        self.steps = 0
        self.step_seconds = 0.0
        self.reduce_seconds = 0.0  # of the steps: the gradients' trip to the host, all-reduce and back
        self.master.seed = seed * self.size + self.rank  # dropout: different masks per shard
        self.grad = self.master.executable("grad")
        self.update = self.master.executable("update", optimizer)
        for p in trainable:
            assert self.master.buffers[grad_name(p)] is share[grad_name(p)]

    def step(self, x: np.ndarray, y: np.ndarray, hyper: np.ndarray, step: int) -> float:
        m = self.master
        lo, hi = self.rank * self.shard, (self.rank + 1) * self.shard
        m.buffers[m.graph.inputs[0]][...] = x[lo:hi]
        m.buffers[m.graph.labels[0]][...] = y[lo:hi]
        m.steps = step
        m.set_rng()
        from mpi4py import MPI

        t0 = time.perf_counter()
        self.grad.run()
        t1 = time.perf_counter()
        self.grads.pull()
        self.flat[-1] = m.buffers["loss"]
        self.comm.Allreduce(MPI.IN_PLACE, self.flat, op=MPI.SUM)
        self.flat /= self.size
        self.grads.push()
        t2 = time.perf_counter()
        m.buffers[HYPER][...] = hyper
        self.update.run()
        self.steps += 1
        self.step_seconds += time.perf_counter() - t0
        self.reduce_seconds += t2 - t1
        return float(self.flat[-1])

    def timing(self) -> str:
        """The all-reduce's part of a step, averaged over the steps taken and the ranks."""
        steps, total, reduce = (self.comm.allreduce(v) for v in (self.steps, self.step_seconds, self.reduce_seconds))
        if not steps:
            return "no steps taken"
        return (f"all-reduce {1e3 * reduce / steps:.2f} ms of a {1e3 * total / steps:.2f} ms step "
                f"({100 * reduce / max(total, 1e-12):.0f}%), {4 * (self.flat.size - 1):,} bytes of gradients a rank")

    def describe(self) -> str:
        """Where the ranks run: "2 MPI ranks", "2 MPI ranks on 1 GPU"."""
        text = f"{self.size} MPI ranks"
        if self.places[0][1] is not None:
            gpus = len(set(self.places))
            text += f" on {gpus} GPU{'s' if gpus > 1 else ''}"
        return text

    def identical(self) -> bool:
        """All ranks hold bit-identical parameters (compared by digest)."""
        h = hashlib.sha256()
        for p in self.master.graph.params:
            h.update(np.ascontiguousarray(self.master.buffers[p]).tobytes())
        every = self.comm.allgather(h.hexdigest())
        return all(d == every[0] for d in every)

    def close(self) -> None:
        pass
