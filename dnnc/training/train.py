"""Training and evaluation: Python feeds batches; each step is one native call.

The training settings come from the network's `train { }` block, overridden by arguments.
Checkpoints hold parameters, optimizer state and everything needed to resume exactly
(epoch, step, seed, normalization); they are written atomically at every epoch end and on
Ctrl-C. Shuffling is a function of (seed, epoch), so a resumed run sees the same batches.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..api import Model, Network
from ..base.errors import DnncError
from ..base.units import human_seconds
from ..front.settings import LR_DECAYS, Settings, data_path, optimizer_spec, settings_from  # noqa: F401 (read here)
from ..io import data as datamod
from ..io.checkpoint import (META, STATE, check_overwrite, compile_for, read_checkpoint,  # noqa: F401 (also
                             restore, save_checkpoint)  # read as train.META, train.read_checkpoint, ...)
from ..schedule.steps import as_schedule
from ..te.names import grad_name
from ..te.optim import Optimizer, lr_at
from . import distributed, paramserver
from .parallel import Hogwild, Replicas, Single
from .status import Status, count, status_mode


# ----------------------------------------------------------------------------- a run's progress

@dataclass
class Progress:
    """Where a run stands, as its checkpoint records it."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # completed steps of the current epoch
    global_step: int = 0
    loss_sum: float = 0.0  # of the current epoch's steps
    history: list = field(default_factory=list)


# ----------------------------------------------------------------------------- evaluation

@dataclass
class Evaluation:
    loss: float
    accuracy: float
    per_class: np.ndarray
    confusion: np.ndarray  # [true class, predicted class]
    count: int


class Evaluator:
    """Loss and accuracy over a whole data set: full batches, then one program for the rest."""

    def __init__(self, model: Model):
        self.model = model
        self._tail: dict[int, Model] = {}

    def _model_for(self, n: int) -> Model:
        if n == self.model.batch:
            return self.model
        if n not in self._tail:
            self._tail[n] = self.model.network.compile(batch=n, dtype=self.model.dtype, schedule=self.model.schedule,
                                                       threads=self.model.threads, target=self.model.target)
        m = self._tail[n]
        m.params.update_from(self.model.params)
        m.states.update_from(self.model.states)
        return m

    def run(self, x: np.ndarray, y: np.ndarray, classes: int) -> Evaluation:
        g = self.model.graph
        inp, lab, out = g.inputs[0], g.labels[0], g.outputs[0]
        B = self.model.batch
        total_loss = 0.0
        conf = np.zeros((classes, classes), dtype=np.int64)
        for start in range(0, len(x), B):
            stop = min(start + B, len(x))
            m = self._model_for(stop - start)
            ex = m.executable("loss")
            m.buffers[inp][...] = x[start:stop]
            m.buffers[lab][...] = y[start:stop]
            ex.run()
            total_loss += float(m.buffers["loss"]) * (stop - start)
            pred = m.buffers[out].reshape(stop - start, -1).argmax(axis=1)
            np.add.at(conf, (y[start:stop], pred), 1)
        n = max(len(x), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per = np.diag(conf) / conf.sum(axis=1)
        return Evaluation(total_loss / n, float(np.trace(conf)) / n, per, conf, len(x))


# ----------------------------------------------------------------------------- training

@dataclass
class Result:
    model: Model
    settings: Settings
    evaluation: Evaluation
    seconds: float
    history: list
    rank: int = 0  # of this process among MPI ranks (rank 0 speaks for a distributed run)
    checkpoint: str | None = None  # the file the run wrote




def train(net: Network, data: str | None = None, *, epochs: int | None = None, batch: int | None = None,
          lr: float | None = None, optimizer: str | None = None, seed: int = 0, out: str | None = None,
          resume: str | None = None, log=print, progress: bool | None = None, schedule=True,
          target: str = "cpu", threads: int | None = None, mode: str = "single", servers: int = 1,
          staleness: int = 4, on_nan: str = "stop") -> Result:
    """Train `net` on a data set (default: the embedded digits) and evaluate it every epoch.

    `mode` spreads the steps out (dnnc/parallel.py): "single" (parallel loops inside each
    step), "data" (the batch split across `threads` replicas, gradients averaged), "async"
    (Hogwild on `threads` threads), "distributed" (MPI ranks, gradients all-reduced) or "ps"
    (MPI parameter servers: `servers` ranks hold the weights, the rest train asynchronously,
    at most `staleness` updates ahead of the slowest).

    `on_nan`: a step whose loss or gradient is not finite stops training, naming the step and
    the first layer whose gradient went bad ("stop"), or is undone and skipped ("skip").

    `out` is the checkpoint written after every epoch (default: the `resume` file, else
    NETWORK.npz); a file there that is not a checkpoint of this network is refused before any
    work. `progress` is the status of the epoch under way on stderr: "bar" (or True), a line
    rewritten in place; "lines", a line every STATUS_SECONDS; False, none; None (default), a
    bar on a terminal and lines elsewhere. `log` gets the header and the line per epoch.
    """
    if on_nan not in ("stop", "skip"):
        raise DnncError(f"--on-nan takes stop or skip, not '{on_nan}'")
    if on_nan == "skip" and mode != "single":
        raise DnncError("--on-nan skip works with single-process training (the default mode)")
    t_start = time.perf_counter()
    if mode not in MODES:
        raise DnncError(f"unknown training mode '{mode}' (modes: {', '.join(MODES)})")
    if mode in HOST_MODES and target != "cpu":
        raise DnncError(f"{HOST_MODES[mode]} trains on the CPU; on GPUs, train data parallel with "
                        f"mpiexec -n N dnnc train ... --distributed (one process a GPU)")
    comm = None
    if mode in ("distributed", "ps"):
        comm = distributed.world()
        distributed.check_same_run(comm, net.source or "", repr((data, epochs, batch, lr, optimizer, seed, resume,
                                                                  as_schedule(schedule).key(), target,
                                                                  mode, servers, staleness)))
        if comm.Get_rank() != 0:  # rank 0 speaks and writes for the run
            log, progress = (lambda *a, **k: None), False
    g = net.graph
    if g.loss is None:
        raise DnncError(f"network '{g.name}' has no loss to train (add: loss softmax_cross_entropy(logits, label))")
    if len(g.inputs) != 1 or len(g.labels) != 1:
        raise DnncError("dnnc train feeds networks with one input and one label")
    s = settings_from(net, epochs=epochs, batch=batch, lr=lr, optimizer=optimizer)
    out = str(out or resume or f"{g.name}.npz")  # a resumed run goes on in the file it was read from
    if resume is None or Path(out).resolve() != Path(resume).resolve():  # (that one is read, and checked, below)
        _on_rank_0(comm, lambda: check_overwrite(out, net))
    ds = datamod.fit(datamod.load(data_path(net, data)), net.inputs[g.inputs[0]], g.classes[g.labels[0]])
    prog = Progress()
    norm = datamod.normalization(ds.x_train)
    if mode == "ps":
        return _train_ps(net, s, ds, norm, comm, servers, staleness, seed, out, resume, log, threads, t_start)
    dist = None
    if comm is not None:
        dist = distributed.Distributed(net, s.batch, s.optimizer, comm, seed, schedule=schedule, target=target,
                           threads=threads or 1)
        model = dist.master
    else:
        model = net.compile(batch=s.batch, seed=seed, schedule=schedule, threads=threads, target=target)
    if resume:
        params, state, meta = read_checkpoint(resume, net)
        if meta is None:
            raise DnncError("holds parameters only, not a training state to resume", path=resume)
        restore(model, params)
        try:
            seed = int(meta["seed"])
            norm = tuple(float(v) for v in meta["normalization"])
            prog = Progress(**meta["progress"])
            saved = meta["settings"]
            s = replace(s, batch=int(saved["batch"]), lr_decay=saved["lr_decay"], step_size=saved["step_size"],
                        gamma=saved["gamma"], optimizer=Optimizer(**saved["optimizer"]),
                        epochs=epochs if epochs is not None else saved["epochs"])
            if s.batch < 1 or len(norm) != 2 or prog.epoch < 0:
                raise ValueError("out of range")
        except (KeyError, TypeError, ValueError):
            raise DnncError("corrupt checkpoint metadata (cannot resume from it)", path=resume) from None
        if model.batch != s.batch and dist is None:
            model = net.compile(batch=s.batch, seed=seed, schedule=schedule, threads=threads, target=target)
            restore(model, params)
        model.executable("update" if mode in ("data", "distributed") else "train", s.optimizer)
        for k, v in state.items():
            if k in model.buffers and model.buffers[k].shape == v.shape:
                model.buffers[k][...] = v
        model.weights_changed()
    mean, std = norm
    xt = (ds.x_train - mean) / std
    xs = (ds.x_test - mean) / std
    yt = ds.y_train.astype(np.float32)
    classes = g.classes[g.labels[0]]
    model.seed = seed
    n = threads or os.cpu_count() or 1
    engine = (dist if dist is not None else Replicas(model, s.optimizer, n) if mode == "data"
              else Hogwild(model, s.optimizer, n) if mode == "async" else Single(model, s.optimizer))
    evaluator = Evaluator(model)
    guard = _Snapshot(model) if on_nan == "skip" else None
    skipped = 0
    steps = len(xt) // s.batch
    if steps == 0:
        raise DnncError(f"the batch ({s.batch}) is larger than the training set ({len(xt)} examples)")
    status = Status(status_mode(progress), s.epochs, steps, s.batch)
    log(f"training {g.name} on {ds.source}: {len(xt):,} train / {len(xs):,} test examples, batch {s.batch}, "
        f"{count(s.epochs, 'epoch')}, {s.optimizer.kind} lr {s.optimizer.lr}"
        + (f" momentum {s.optimizer.momentum}" if s.optimizer.kind == "sgd" and s.optimizer.momentum else "")
        + f", lr_decay {s.lr_decay}, seed {seed}{_mode_text(mode, n, dist)}; "
        f"compiled in {human_seconds(time.perf_counter() - t_start)}")
    ev = None
    with _Interrupts() as stop:
        try:
            for epoch in range(prog.epoch, s.epochs):
                order = np.random.default_rng([seed, epoch]).permutation(len(xt))
                t0 = time.perf_counter()
                status.start_epoch(epoch, prog.step_in_epoch)

                def hyper_at(k, epoch=epoch, first=prog.global_step - prog.step_in_epoch):
                    rate = lr_at(s.lr_decay, s.optimizer.lr, epoch, s.epochs, k, steps, s.step_size, s.gamma)
                    return s.optimizer.hyper(first + k + 1, rate)

                if mode == "async":  # the epoch's steps on all threads at once
                    losses = engine.epoch(xt, yt, order, prog.step_in_epoch, steps, prog.global_step + 1, hyper_at)
                    for j, v in enumerate(losses):
                        _check_finite(v, epoch, prog.step_in_epoch + j + 1)
                    prog.global_step += len(losses)
                    prog.loss_sum += sum(losses)
                    prog.step_in_epoch = steps
                for k in range(prog.step_in_epoch, steps):
                    idx = order[k * s.batch:(k + 1) * s.batch]
                    hyper = hyper_at(k)
                    prog.global_step += 1  # dropout's masks: new every step
                    if guard is not None:
                        guard.save()
                    loss = engine.step(xt[idx], yt[idx], hyper, prog.global_step)
                    # the loss alone each step (a bad gradient makes it bad too, by the next step);
                    # with skip, every array, so a step is undone before its damage spreads
                    bad = _first_bad(model, loss) if guard is not None or not np.isfinite(loss) else None
                    if bad is not None:
                        if guard is not None:  # undo the step's update and go on
                            guard.restore()
                            if not skipped:
                                log(f"step {k + 1} of epoch {epoch + 1} skipped: {bad}")
                            skipped += 1
                            prog.step_in_epoch = k + 1
                            stop.check()
                            continue
                        raise DnncError(f"{bad} at epoch {epoch + 1}, step {k + 1}; try a lower learning rate (--lr), "
                                        f"or --on-nan skip")
                    prog.loss_sum += loss
                    prog.step_in_epoch = k + 1
                    stop.check()  # here the weights and the progress agree: a consistent checkpoint
                    status.step(k + 1, prog.loss_sum)
                dt = time.perf_counter() - t0
                status.end_steps()
                ev = evaluator.run(xs, ds.y_test, classes)
                train_loss = prog.loss_sum / steps
                prog.history.append({"epoch": epoch + 1, "train_loss": train_loss, "test_loss": ev.loss,
                                     "accuracy": ev.accuracy, "seconds": dt})
                prog.epoch, prog.step_in_epoch, prog.loss_sum = epoch + 1, 0, 0.0
                if dist is None or dist.rank == 0:
                    save_checkpoint(out, model, s, seed, norm, prog)
                log(f"epoch {epoch + 1:3d}/{s.epochs}  train loss {train_loss:.4f}  test loss {ev.loss:.4f}  "
                    f"accuracy {100 * ev.accuracy:6.2f}%  {human_seconds(dt):>7}  {steps * s.batch / max(dt, 1e-9):8.0f} images/s"
                    + (f"  ({skipped} steps skipped)" if skipped else ""))
                skipped = 0
                stop.check()
        except KeyboardInterrupt:
            if stop.forced:
                log(f"interrupted twice: no new checkpoint written; {out} holds the last epoch's, if any")
            else:
                if dist is None or dist.rank == 0:
                    save_checkpoint(out, model, s, seed, norm, prog)
                log(f"interrupted: checkpoint written to {out} (epoch {prog.epoch + 1}, step {prog.step_in_epoch}); "
                    f"continue with --resume {out}")
            raise
        finally:
            engine.close()
    if ev is None:
        ev = evaluator.run(xs, ds.y_test, classes)
    if dist is not None:
        same = dist.identical()
        log(f"parameters {'identical' if same else 'DIFFERENT'} on all {dist.size} ranks; {dist.timing()}")
        if not same:
            raise DnncError("the ranks' parameters diverged (this is a bug in dnnc)")
    model.normalization = norm  # the returned model takes inputs as the data set holds them, like a loaded one
    return Result(model, s, ev, time.perf_counter() - t_start, prog.history, dist.rank if dist else 0, out)


class _Interrupts:
    """Ctrl-C during training is noted and acted on between steps, where the weights and the
    progress agree, so the checkpoint it writes resumes bit for bit. A second Ctrl-C stops at
    once without writing (the last epoch's checkpoint stays as it was)."""

    def __init__(self):
        self.requested = self.forced = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, signum, frame):
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


MODES = ("single", "data", "async", "distributed", "ps")
HOST_MODES = {"data": "--data-parallel", "async": "--async", "ps": "--distributed=ps"}  # CPU threads' modes


def _train_ps(net, s, ds, norm, comm, servers, staleness, seed, out, resume, log, threads, t_start) -> Result:
    if resume:
        raise DnncError("--resume is not available with --distributed=ps (the servers hold the optimizer state)")
    g = net.graph
    mean, std = norm
    xt, xs = (ds.x_train - mean) / std, (ds.x_test - mean) / std
    yt = ds.y_train.astype(np.float32)
    classes = g.classes[g.labels[0]]
    size = comm.Get_size()
    log(f"training {g.name} on {ds.source}: {len(xt):,} train / {len(xs):,} test examples, batch {s.batch}, "
        f"{count(s.epochs, 'epoch')}, "
        f"{s.optimizer.kind} lr {s.optimizer.lr}; parameter servers: {servers} server(s), {size - servers} "
        f"worker(s), staleness {staleness}")
    prog = Progress()

    def evaluate(model):
        return Evaluator(model).run(xs, ds.y_test, classes)

    def save(model, entry):
        prog.epoch = entry["epoch"]
        prog.history.append(entry)
        save_checkpoint(out, model, s, seed, norm, prog)

    res = paramserver.run(net, s, xt, yt, comm, servers, staleness, seed, log, save, evaluate, threads or 1)
    if res is None:
        return Result(None, s, None, time.perf_counter() - t_start, [], comm.Get_rank())
    model, history = res
    ev = evaluate(model)
    prog.epoch, prog.history = s.epochs, history
    save_checkpoint(out, model, s, seed, norm, prog)
    model.normalization = norm
    return Result(model, s, ev, time.perf_counter() - t_start, history, 0, out)


def _on_rank_0(comm, check) -> None:
    """Run a check of the file to be written where it is written (rank 0 of an MPI run) and
    fail on every rank alike, so that no rank waits for one that stopped."""
    if comm is None:
        return check()
    refusal = None
    if comm.Get_rank() == 0:
        try:
            check()
        except DnncError as e:
            refusal = (e.message, e.path)
    refusal = comm.bcast(refusal, root=0)
    if refusal is not None:
        raise DnncError(refusal[0], path=refusal[1])


def _mode_text(mode: str, n: int, dist) -> str:
    if mode == "data":
        return f"; data parallel on {n} threads"
    if mode == "async":
        return f"; Hogwild on {n} threads"
    if mode == "distributed":
        return f"; data parallel on {dist.describe()}"
    return ""


class _Snapshot:
    """Copies of the weights, running statistics and optimizer state, to undo one step."""

    def __init__(self, model: Model):
        keep = set(model.graph.params) | set(model.graph.states)
        keep |= {n for n in model.buffers if n.endswith((".v", ".m"))}
        self.buffers = model.buffers  # looked up at each use: a GPU's are mirrors
        self.copy = {n: model.buffers[n].copy() for n in keep if n in model.buffers}

    def save(self) -> None:
        for n, a in self.copy.items():
            np.copyto(a, self.buffers[n])

    def restore(self) -> None:
        for n, a in self.copy.items():
            np.copyto(self.buffers[n], a)


def _first_bad(model: Model, loss: float) -> str | None:
    """What went non-finite in the last step: the first parameter (in source order) whose
    gradient, then whose updated value, did, else the loss; None when all is finite."""
    grads = [p for p in model.graph.params if grad_name(p) in model.buffers]
    arrays = [(p, "gradient", model.buffers[grad_name(p)]) for p in grads]
    arrays += [(p, "value", model.buffers[p]) for p in model.graph.params]  # an update can overflow
    if np.isfinite(loss) and all(np.isfinite(a).all() for _, _, a in arrays):
        return None
    for p, what, a in arrays:
        if not np.isfinite(a).all():
            layer = next((layer.name for layer in model.graph.layers if p in layer.params), p)
            return f"the {what} of {p} (layer {layer}) became {'nan' if np.isnan(a).any() else 'inf'}"
    return f"the loss became {loss}"


def _check_finite(loss: float, epoch: int, step: int) -> None:
    if not np.isfinite(loss):
        raise DnncError(f"the loss became {loss} at epoch {epoch + 1}, step {step}; try a lower learning rate (--lr)")


def evaluate(net: Network, weights: str, data: str | None = None, batch: int = 256, schedule=True,
             threads: int | None = None, target: str = "cpu") -> Evaluation:
    g = net.graph
    if g.loss is None or len(g.labels) != 1:
        raise DnncError(f"network '{g.name}' needs a label and a loss to be evaluated")
    ds = datamod.fit(datamod.load(data_path(net, data)), net.inputs[g.inputs[0]], g.classes[g.labels[0]])
    model = compile_for(net, weights, batch=min(batch, max(len(ds.x_test), 1)), schedule=schedule,
                        threads=threads, target=target)
    mean, std = model.normalization or (0.0, 1.0)  # the Evaluator feeds the buffers as they are
    return Evaluator(model).run((ds.x_test - mean) / std, ds.y_test, g.classes[g.labels[0]])
