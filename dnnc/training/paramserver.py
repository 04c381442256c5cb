"""Asynchronous training with parameter servers on MPI (DistBelief; Li et al., OSDI 2014).

`mpiexec -n N dnnc train NET --distributed=ps [--servers K] [--staleness S]`: ranks 0..K-1 are
servers, each owning a contiguous shard of the flattened parameters and its optimizer state;
the other ranks are workers. A worker repeatedly pulls the parameters from every server,
computes the gradient of its own next mini-batch (worker w takes batches w, w + W, ... of
each epoch's seeded order), and pushes each server its part. A server applies each push as
it arrives, with the optimizer's compiled update over its shard.

Staleness: a worker's pull is answered only while it is at most S updates ahead of the
slowest live worker. Failures: a worker silent for FAILURE_SECONDS is declared dead, said
so once, and dropped; the others go on. Before its first message a worker is compiling, so
it has START_SECONDS; one declared dead that speaks again is taken back. At the end server 0 gathers the shards, evaluates
the model and writes the checkpoint (with a single server, also after every epoch).
"""
from __future__ import annotations

import os
import time

import numpy as np

from ..api import Model, init_values
from ..driver.compile import Built, from_statements
from ..ir import Buffer
from ..target.cpu import CPU
from .distributed import flat_views
from ..base.errors import DnncError
from ..te.optim import HYPER, HYPER_SIZE, lr_at
from ..base.units import human_seconds
from . import distributed
from ..te.names import grad_name

PULL, PARAMS, PUSH, DONE, FINAL, BYE = 11, 12, 13, 14, 15, 16
FAILURE_SECONDS = float(os.environ.get("DNNC_PS_FAILURE_SECONDS", "10"))
START_SECONDS = max(60.0, FAILURE_SECONDS)  # silence allowed before a worker's first message
# fault injection for tests: "RANK:STEPS" makes that worker die (os._exit) after STEPS pushes
FAIL_AFTER = os.environ.get("DNNC_PS_FAIL_AFTER", "")


def layout(g) -> tuple[list[str], list[int]]:
    trainable = [p for p in g.params if p not in g.fixed]
    return trainable, [int(np.prod(g.tensors[p].shape)) for p in trainable]


def shards(total: int, k: int) -> list[tuple[int, int]]:
    """Contiguous near-equal ranges of the flat parameter vector, one per server."""
    cuts = [total * j // k for j in range(k + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


class ShardUpdate:
    """The optimizer's compiled update over one flat shard: `shard -= step(shard.grad)`."""

    def __init__(self, theta: np.ndarray, optimizer):
        n = theta.size
        buffers = [Buffer(HYPER, (HYPER_SIZE,), "hyper"), Buffer("shard", (n,), "param"),
                   Buffer(grad_name("shard"), (n,), "grad")]
        buffers += [Buffer(s, (n,), "state") for s in optimizer.state("shard")]
        job = from_statements("shard_update", buffers, [("shard.update", optimizer.stmts("shard", (n,)))], CPU)
        self.grad = np.zeros(n, np.float32)
        self.arrays = {"shard": theta, grad_name("shard"): self.grad}
        self.ex = Built(job, self.arrays)

    def apply(self, grad: np.ndarray, hyper: np.ndarray) -> None:
        self.grad[...] = grad
        self.arrays[HYPER][...] = hyper
        self.ex.run()


def run(net, s, x, y, comm, servers: int, staleness: int, seed: int, log, save, evaluate, threads: int):
    """Train on (x, y). On server 0 return (model, history), elsewhere None. `evaluate(model)`
    and `save(model, epoch entry)` are the caller's, for the per-epoch line and checkpoint."""
    rank, size = comm.Get_rank(), comm.Get_size()
    if servers < 1 or size - servers < 1:
        raise DnncError(f"--distributed=ps needs at least one server and one worker: {size} ranks, "
                        f"--servers {servers}")
    g = net.at_batch(s.batch, training=True)
    names, sizes = layout(g)
    total = sum(sizes)
    ranges = shards(total, servers)
    steps = len(x) // s.batch
    if rank < servers:
        return _server(net, s, g, names, sizes, ranges, steps, comm, staleness, seed, log, save, evaluate)
    _worker(net, s, names, sizes, ranges, steps, x, y, comm, servers, seed, threads)
    return None


def _worker(net, s, names, sizes, ranges, steps, x, y, comm, servers, seed, threads) -> None:
    rank, size = comm.Get_rank(), comm.Get_size()
    me, workers = rank - servers, size - servers
    g = net.at_batch(s.batch, training=True)
    theta = np.zeros(sum(sizes), np.float32)
    grads = np.zeros(sum(sizes) + 1, np.float32)  # the gradient, then the loss
    share = flat_views(theta, g, names, sizes)
    share.update({grad_name(p): v for p, v in flat_views(grads, g, names, sizes).items()})
    model = Model(net, s.batch, seed, share=share, threads=threads)
    model.seed = seed * size + rank
    ex = model.executable("grad")
    inp, lab = g.inputs[0], g.labels[0]
    fail = FAIL_AFTER.split(":") if FAIL_AFTER else None
    pushes = 0
    version = np.zeros(1, np.int64)
    for epoch in range(s.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        for k in range(me, steps, workers):
            version[0] = pushes
            for j, (lo, hi) in enumerate(ranges):  # pull
                comm.Send(version, dest=j, tag=PULL)
            for j, (lo, hi) in enumerate(ranges):
                comm.Recv(theta[lo:hi], source=j, tag=PARAMS)
            idx = order[k * s.batch:(k + 1) * s.batch]
            model.buffers[inp][...] = x[idx]
            model.buffers[lab][...] = y[idx]
            model.steps = epoch * steps + k + 1
            model.set_rng()
            ex.run()
            grads[-1] = model.buffers["loss"]
            for j, (lo, hi) in enumerate(ranges):  # push: this server's part, and the loss
                comm.Send(np.concatenate([grads[lo:hi], grads[-1:]]), dest=j, tag=PUSH)
            pushes += 1
            if fail and int(fail[0]) == rank and pushes >= int(fail[1]):
                os._exit(3)  # a worker that dies without a word
    for j in range(len(ranges)):
        comm.Send(np.zeros(1, np.int64), dest=j, tag=DONE)
    lost = np.zeros(1, np.int64)
    comm.Recv(lost, source=0, tag=BYE)  # how many workers died: then MPI cannot be finalized
    if lost[0]:
        distributed.SKIP_FINALIZE = True


def _server(net, s, g, names, sizes, ranges, steps, comm, staleness, seed, log, save, evaluate):
    from mpi4py import MPI

    rank, size = comm.Get_rank(), comm.Get_size()
    servers = len(ranges)
    lo, hi = ranges[rank]
    init = dict(init_values(g, seed))  # every server starts from the same seeded weights
    theta = np.ascontiguousarray(np.concatenate([init[p].reshape(-1) for p in names])[lo:hi])
    update = ShardUpdate(theta, s.optimizer)
    live = set(range(servers, size))
    finished: set[int] = set()
    version = {w: 0 for w in live}
    heard = {w: time.monotonic() for w in live}
    started: set[int] = set()  # workers heard from at least once
    deferred: list[int] = []
    updates, loss_sum, losses, history = 0, 0.0, 0, []
    status = MPI.Status()
    msg = np.zeros(1, np.int64)
    push = np.zeros(hi - lo + 1, np.float32)
    model = None

    def answer(w: int) -> None:
        comm.Send(theta, dest=w, tag=PARAMS)

    def fresh_enough(w: int) -> bool:
        return version[w] - min(version[v] for v in live) <= staleness

    t_epoch = time.perf_counter()
    while live:
        if comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            w, tag = status.Get_source(), status.Get_tag()
            heard[w] = time.monotonic()
            started.add(w)
            if w not in live and w not in finished and tag != DONE:  # slow, not dead
                live.add(w)
                log(f"worker rank {w} is back: carrying on with {len(live)} worker(s)")
            if tag == PUSH:
                comm.Recv(push, source=w, tag=PUSH)
                epoch = updates // steps
                rate = lr_at(s.lr_decay, s.optimizer.lr, epoch, s.epochs, updates % steps, steps, s.step_size,
                             s.gamma)
                update.apply(push[:-1], s.optimizer.hyper(updates + 1, rate))
                updates += 1
                version[w] += 1
                loss_sum, losses = loss_sum + float(push[-1]), losses + 1
                if updates % steps == 0 and rank == 0:  # an epoch's worth of updates
                    dt = time.perf_counter() - t_epoch
                    entry = {"epoch": updates // steps, "train_loss": loss_sum / max(losses, 1), "seconds": dt}
                    if servers == 1:
                        model = _model(net, s, g, names, sizes, theta, seed, model)
                        ev = evaluate(model)
                        entry.update(test_loss=ev.loss, accuracy=ev.accuracy)
                        save(model, entry)
                        log(f"epoch {entry['epoch']:3d}/{s.epochs}  train loss {entry['train_loss']:.4f}  test loss "
                            f"{ev.loss:.4f}  accuracy {100 * ev.accuracy:6.2f}%  {human_seconds(dt):>7}  "
                            f"{len(live)} worker(s) running")
                    else:
                        log(f"epoch {entry['epoch']:3d}/{s.epochs}  train loss {entry['train_loss']:.4f}  "
                            f"{human_seconds(dt):>7}  {len(live)} worker(s)")
                    history.append(entry)
                    loss_sum, losses, t_epoch = 0.0, 0, time.perf_counter()
            elif tag == PULL:
                comm.Recv(msg, source=w, tag=PULL)
                (answer if fresh_enough(w) else deferred.append)(w)
            elif tag == DONE:
                comm.Recv(msg, source=w, tag=DONE)
                live.discard(w)
                finished.add(w)
            else:
                raise DnncError(f"parameter server {rank}: unexpected message {tag} from rank {w}")
        else:
            now = time.monotonic()
            for w in sorted(live):
                allowed = FAILURE_SECONDS if w in started else START_SECONDS
                if now - heard[w] > allowed and w not in deferred:
                    live.discard(w)
                    log(f"worker rank {w} has been silent for {human_seconds(allowed)} after {version[w]} updates: "
                        f"carrying on with {len(live)} worker(s)")
            time.sleep(0.0002)
        for w in list(deferred):  # pulls held back by the staleness bound
            if w not in live:
                deferred.remove(w)
            elif fresh_enough(w):
                deferred.remove(w)
                answer(w)
    lost = size - servers - len(finished)
    if lost:
        distributed.SKIP_FINALIZE = True
    if rank == 0:  # tell the workers that finished whether any died (so they skip MPI_Finalize)
        for w in sorted(finished):
            comm.Send(np.array([lost], np.int64), dest=w, tag=BYE)
    # the final parameters, gathered on server 0
    if rank != 0:
        comm.Send(theta, dest=0, tag=FINAL)
        return None
    flat = np.empty(sum(sizes), np.float32)
    flat[lo:hi] = theta
    for j in range(1, servers):
        comm.Recv(flat[ranges[j][0]:ranges[j][1]], source=j, tag=FINAL)
    model = _model(net, s, g, names, sizes, flat, seed, model)
    return model, history


def _model(net, s, g, names, sizes, flat, seed, model):
    """A model at the run's batch holding these parameters (for evaluation and checkpoints)."""
    if model is None:
        model = net.compile(batch=s.batch, seed=seed, threads=1)
    k = 0
    for p, n in zip(names, sizes):
        model.params[p] = flat[k:k + n].reshape(g.tensors[p].shape)
        k += n
    return model
