"""Training on many cores and many machines: the ways a step can be spread out.

Each engine runs training steps for `train.train` on a master model, whose parameters,
optimizer state and checkpoints are the run's:

- `Single`: the compiled training step, with parallel loops inside each kernel.
- `Replicas` (synchronous data parallelism on threads): each of N replicas computes the
  gradient of its slice of the batch on its own thread; the gradients are summed in replica
  order (so a thread count always gives the same bits) and one update is applied.
- `Hogwild` (asynchronous, lock-free): N threads each train on their own mini-batches and
  update the shared parameters and optimizer state without locks (Niu et al., NIPS 2011).
- `Distributed` (MPI, synchronous): each rank computes the gradient of its shard of every
  global batch; one Allreduce sums them, and every rank applies the same update.

Native calls release the GIL, so Python threads run the compiled code in parallel.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..api import Model
from ..base.errors import DnncError
from ..driver.compile import WEIGHTS_STAMP
from ..te.optim import HYPER, Optimizer
from ..te.names import grad_name


class Single:
    """One model, one native call per step."""

    def __init__(self, master: Model, optimizer: Optimizer):
        self.master = master
        self.train = master.executable("train", optimizer)

    def step(self, x: np.ndarray, y: np.ndarray, hyper: np.ndarray, step: int) -> float:
        m = self.master
        m.buffers[m.graph.inputs[0]][...] = x
        m.buffers[m.graph.labels[0]][...] = y
        m.buffers[HYPER][...] = hyper
        m.steps = step
        m.set_rng()
        self.train.run()
        return float(m.buffers["loss"])

    def close(self) -> None:
        pass


def _replica(master: Model, batch: int, share: dict, seed: int) -> Model:
    return Model(master.network, batch, seed, master.dtype, master.schedule, 1, share=share, target=master.target,
                 checks=master.checks)


class Replicas:
    """Synchronous data parallelism: the batch split across N single-threaded replicas that
    share the master's parameters; their gradients are averaged in a fixed order."""

    def __init__(self, master: Model, optimizer: Optimizer, n: int):
        if n < 2:
            raise DnncError("data parallelism needs at least 2 threads (--threads N)")
        if master.batch % n:
            raise DnncError(f"the batch ({master.batch}) must divide evenly among {n} threads")
        self.master, self.n = master, n
        self.update = master.executable("update", optimizer)
        self.trainable = [p for p in master.graph.params if grad_name(p) in master.buffers]
        share = {p: master.buffers[p] for p in master.graph.params}
        self.models = [_replica(master, master.batch // n, share, master.seed * n + k) for k in range(n)]
        self.grads = [m.executable("grad") for m in self.models]
        self.pool = ThreadPoolExecutor(n)

    def step(self, x: np.ndarray, y: np.ndarray, hyper: np.ndarray, step: int) -> float:
        k = self.master.batch // self.n
        inp, lab = self.master.graph.inputs[0], self.master.graph.labels[0]
        for r, m in enumerate(self.models):
            m.buffers[inp][...] = x[r * k:(r + 1) * k]
            m.buffers[lab][...] = y[r * k:(r + 1) * k]
            m.steps = step
            m.set_rng()
        list(self.pool.map(lambda ex: ex.run(), self.grads))
        for p in self.trainable:  # the mean of the replicas' gradients, summed in replica order
            g = self.master.buffers[grad_name(p)]
            np.copyto(g, self.models[0].buffers[grad_name(p)])
            for m in self.models[1:]:
                g += m.buffers[grad_name(p)]
            g /= self.n
        for s in self.master.graph.states:  # running statistics: the replicas' mean, then shared
            st = self.master.buffers[s]
            st[...] = np.mean([m.buffers[s] for m in self.models], axis=0)
            for m in self.models:
                m.buffers[s][...] = st
        self.master.buffers[HYPER][...] = hyper
        self.update.run()
        return float(np.mean([float(m.buffers["loss"]) for m in self.models]))

    def close(self) -> None:
        self.pool.shutdown()


class Hogwild:
    """Asynchronous SGD on shared memory: each thread trains its own mini-batches and writes
    the shared parameters (and optimizer state) without locks, as they are read by others."""

    def __init__(self, master: Model, optimizer: Optimizer, n: int):
        if n < 2:
            raise DnncError("--async needs at least 2 threads (--threads N)")
        master.executable("train", optimizer)  # allocates the optimizer state in master.buffers
        share = {p: master.buffers[p] for p in master.graph.params}
        share.update({s: master.buffers[s] for p in master.graph.params for s in optimizer.state(p)
                      if s in master.buffers})
        share.update({s: master.buffers[s] for s in master.graph.states})
        share[WEIGHTS_STAMP] = master.buffers[WEIGHTS_STAMP]  # each replica's step changes the master's weights
        self.master, self.n = master, n
        self.models = [_replica(master, master.batch, share, master.seed * n + k) for k in range(n)]
        self.trains = [m.executable("train", optimizer) for m in self.models]

    def epoch(self, x: np.ndarray, y: np.ndarray, order: np.ndarray, start: int, steps: int, first_step: int,
              hyper_at) -> list[float]:
        """Steps start..steps-1 of an epoch: thread t takes every n-th of them from the t-th;
        the loss of each step (in step order)."""
        B = self.master.batch
        inp, lab = self.master.graph.inputs[0], self.master.graph.labels[0]
        todo = list(range(start, steps))
        losses = [0.0] * steps
        errors: list[BaseException] = []

        def work(t: int) -> None:
            m, ex = self.models[t], self.trains[t]
            try:
                for k in todo[t::self.n]:
                    idx = order[k * B:(k + 1) * B]
                    m.buffers[inp][...] = x[idx]
                    m.buffers[lab][...] = y[idx]
                    m.buffers[HYPER][...] = hyper_at(k)
                    m.steps = first_step + k - start
                    m.set_rng()
                    ex.run()
                    losses[k] = float(m.buffers["loss"])
            except BaseException as e:  # reported by the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(self.n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        return losses[start:]

    def close(self) -> None:
        pass
