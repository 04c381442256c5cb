"""Training and evaluation: Python feeds batches; each step is one native call.

The training settings come from the network's `train { }` block, overridden by arguments.
Checkpoints hold parameters, optimizer state and everything needed to resume exactly
(epoch, step, seed, normalization); they are written atomically at every epoch end and on
Ctrl-C. Shuffling is a function of (seed, epoch), so a resumed run sees the same batches.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from . import data as datamod
from .api import Model, Network
from .errors import DnncError, did_you_mean
from .fileio import beside_source, check_weights, no_such_file, load_npz, save_npz
from .frontend import CallValue, NameRef
from .optim import Optimizer, lr_at
from .parallel import Hogwild, Replicas, Single

META = "__meta__"
STATE = "state:"
SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class Settings:
    optimizer: Optimizer = Optimizer("sgd", 0.01, 0.9)
    schedule: str = "constant"
    step_size: int = 0
    gamma: float = 0.1
    batch: int = 64
    epochs: int = 10


def settings_from(net: Network, **overrides) -> Settings:
    """The train { } block of the network, then the given overrides (None means not given)."""
    s = Settings()
    opt = s.optimizer
    for name, (value, loc) in net.graph.settings.items():
        if name.startswith("schedule."):
            continue
        if name == "optimizer":
            opt = _optimizer(value, loc)
        elif name == "schedule":
            if isinstance(value, NameRef):
                s = replace(s, schedule=_schedule_name(value.name, loc))
            elif isinstance(value, CallValue):
                kw = _kwargs(value, {"size": int, "gamma": float}, loc)
                s = replace(s, schedule=_schedule_name(value.name, loc), step_size=kw.get("size", 0),
                            gamma=kw.get("gamma", 0.1))
            else:
                raise DnncError(f"schedule is one of {', '.join(SCHEDULES)}", loc)
        elif name in ("batch", "epochs"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DnncError(f"{name} must be a whole number of at least 1, got {value!r}", loc)
            s = replace(s, **{name: value})
        elif name == "lr":
            opt = replace(opt, lr=_number(value, "lr", loc))
        elif name == "data":
            data_path(net)
        else:
            known = ("optimizer", "schedule", "batch", "epochs", "lr", "data")
            raise DnncError(f"unknown training setting '{name}'{did_you_mean(name, known)} "
                            f"(settings: {', '.join(known)})", loc)
    if overrides.get("optimizer"):
        kind = overrides["optimizer"]
        if kind != opt.kind:
            opt = Optimizer(kind, opt.lr if kind == "sgd" else 0.001, 0.9 if kind == "sgd" else 0.0)
    if overrides.get("lr") is not None:
        opt = replace(opt, lr=overrides["lr"])
    s = replace(s, optimizer=opt)
    for k in ("batch", "epochs"):
        if overrides.get(k) is not None:
            s = replace(s, **{k: overrides[k]})
    return s


def data_path(net: Network, given: str | None = None) -> str | None:
    """The data to train and evaluate on: as given (--data), else the train block's
    `data = "DIR_OR.npz"` (beside the .net file), else None for the embedded digits."""
    if given is not None:
        return given
    if "data" not in net.graph.settings:
        return None
    value, loc = net.graph.settings["data"]
    if not isinstance(value, str):
        raise DnncError('data is a file or directory name in quotes: data = "digits/"', loc)
    path = beside_source(value, loc)
    if not path.exists():
        raise DnncError(f"data '{value}': {no_such_file(path, 'no such file or directory').message}", loc)
    return str(path)


def _schedule_name(name, loc):
    if name not in SCHEDULES:
        raise DnncError(f"unknown schedule '{name}'{did_you_mean(name, SCHEDULES)} (schedules: {', '.join(SCHEDULES)})",
                        loc)
    return name


def _number(v, what, loc) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise DnncError(f"{what} must be a non-negative number, got {v!r}", loc)
    return float(v)


def _kwargs(call: CallValue, allowed: dict, loc) -> dict:
    out = {}
    for a in call.args:
        if a.key is None or a.key not in allowed:
            raise DnncError(f"{call.name}(...) takes {', '.join(k + '=' for k in allowed)}", a.loc)
        conv = allowed[a.key]
        if conv is bool:
            out[a.key] = bool(a.value)
        elif conv is int:
            if not isinstance(a.value, int) or a.value < 1:
                raise DnncError(f"{a.key} must be a whole number of at least 1", a.loc)
            out[a.key] = a.value
        else:
            out[a.key] = _number(a.value, a.key, a.loc)
    return out


def _optimizer(value, loc) -> Optimizer:
    name = value.name if isinstance(value, (NameRef, CallValue)) else None
    if name == "sgd":
        kw = _kwargs(value, {"lr": float, "momentum": float, "nesterov": bool, "weight_decay": float}, loc) \
            if isinstance(value, CallValue) else {}
        return Optimizer("sgd", kw.get("lr", 0.01), kw.get("momentum", 0.0), kw.get("nesterov", False),
                         kw.get("weight_decay", 0.0))
    if name == "adam":
        kw = _kwargs(value, {"lr": float, "beta1": float, "beta2": float, "eps": float, "weight_decay": float},
                     loc) if isinstance(value, CallValue) else {}
        return Optimizer("adam", kw.get("lr", 0.001), 0.0, False, kw.get("weight_decay", 0.0),
                         kw.get("beta1", 0.9), kw.get("beta2", 0.999), kw.get("eps", 1e-8))
    raise DnncError("optimizer is sgd(lr=..., momentum=..., nesterov=..., weight_decay=...) or "
                    "adam(lr=..., beta1=..., beta2=..., eps=..., weight_decay=...)", loc)


# ----------------------------------------------------------------------------- checkpoints

@dataclass
class Progress:
    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # completed steps of the current epoch
    global_step: int = 0
    loss_sum: float = 0.0  # of the current epoch's steps
    history: list = field(default_factory=list)


def save_checkpoint(path, model: Model, s: Settings, seed: int, norm, progress: Progress) -> None:
    arrays = {n: model.params[n] for n in model.params}
    arrays.update({n: model.states[n] for n in model.states})
    for p in model.params:
        for st in s.optimizer.state(p):
            if st in model.buffers:
                arrays[STATE + st] = model.buffers[st]
    meta = {"format": "dnnc-checkpoint", "version": 1, "network": model.graph.name, "seed": seed,
            "normalization": list(norm), "settings": {**asdict(s), "optimizer": asdict(s.optimizer)},
            "progress": asdict(progress)}
    arrays[META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    save_npz(path, arrays)


def read_checkpoint(path, net: Network) -> tuple[dict, dict, dict | None]:
    """(parameters and running statistics, optimizer state, meta or None) from an .npz or a
    compressed .dnnz, checked against the network."""
    from . import compress

    if compress.is_dnnz(path):
        header, arrays = compress.read(path)
        if header.get("network") != net.name:
            raise DnncError(f"holds a compressed '{header.get('network')}', not '{net.name}'", path=str(path))
        expected = dict(net.params)
        expected.update({n: net.graph.state_specs[n].shape for n in net.graph.states})
        norm = header.get("normalization")
        return check_weights(arrays, expected, path), {}, ({"normalization": norm} if norm else None)
    arrays = load_npz(path)
    meta = None
    if META in arrays:
        try:
            meta = json.loads(bytes(arrays[META].astype(np.uint8)).decode())
            assert isinstance(meta, dict) and meta.get("format") == "dnnc-checkpoint"
        except (ValueError, AssertionError, UnicodeDecodeError, TypeError):
            raise DnncError("corrupt checkpoint metadata", path=str(path)) from None
        if meta.get("network", net.name) != net.name:
            raise DnncError(f"is a checkpoint of network '{meta.get('network')}', not '{net.name}'", path=str(path))
    expected = dict(net.params)
    expected.update({n: net.graph.state_specs[n].shape for n in net.graph.states})
    params = check_weights(arrays, expected, path)
    state = {k[len(STATE):]: v for k, v in arrays.items() if k.startswith(STATE)}
    return params, state, meta


def compile_for(net: Network, params: dict, path, **options) -> Model:
    """A model holding checked weights; a compressed model's sparse enough dense layers are
    read in ELL form (passes/sparse.py chooses by density)."""
    from . import compress
    from .passes.sparse import choose

    sparse = choose(params, [p for p, s in net.params.items() if len(s) == 2]) if compress.is_dnnz(path) else {}
    model = net.compile(sparse=sparse, **options)
    restore(model, params)
    model.fill_sparse()
    return model


def restore(model: Model, arrays: dict) -> None:
    """Parameters and running statistics from checked checkpoint arrays."""
    for n, a in arrays.items():
        (model.params if n in model.params else model.states)[n] = a


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
                                                       overrides=self.model.overrides, threads=self.model.threads)
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


def _bar(done: int, total: int, t0: float, stream) -> None:
    width = 30
    k = int(width * done / max(total, 1))
    rate = done / max(time.perf_counter() - t0, 1e-9)
    stream.write(f"\r  [{'#' * k}{'.' * (width - k)}] {done}/{total} batches  {rate:.1f}/s ")
    stream.flush()


def train(net: Network, data: str | None = None, *, epochs: int | None = None, batch: int | None = None,
          lr: float | None = None, optimizer: str | None = None, seed: int = 0, out: str | None = None,
          resume: str | None = None, log=print, progress: bool | None = None, schedule: bool = True,
          overrides: tuple = (), threads: int | None = None, mode: str = "single", servers: int = 1,
          staleness: int = 4, on_nan: str = "stop") -> Result:
    """Train `net` on a data set (default: the embedded digits) and evaluate it every epoch.

    `mode` spreads the steps out (dnnc/parallel.py): "single" (parallel loops inside each
    step), "data" (the batch split across `threads` replicas, gradients averaged), "async"
    (Hogwild on `threads` threads), "distributed" (MPI ranks, gradients all-reduced) or "ps"
    (MPI parameter servers: `servers` ranks hold the weights, the rest train asynchronously,
    at most `staleness` updates ahead of the slowest).

    `on_nan`: a step whose loss or gradient is not finite stops training, naming the step and
    the first layer whose gradient went bad ("stop"), or is undone and skipped ("skip").
    """
    if on_nan not in ("stop", "skip"):
        raise DnncError(f"--on-nan takes stop or skip, not '{on_nan}'")
    if on_nan == "skip" and mode != "single":
        raise DnncError("--on-nan skip works with single-process training (the default mode)")
    t_start = time.perf_counter()
    if mode not in MODES:
        raise DnncError(f"unknown training mode '{mode}' (modes: {', '.join(MODES)})")
    comm = None
    if mode in ("distributed", "ps"):
        from . import distributed

        comm = distributed.world()
        distributed.check_same_run(comm, net.source or "", repr((data, epochs, batch, lr, optimizer, seed, resume,
                                                                  schedule, [str(o) for o in overrides],
                                                                  mode, servers, staleness)))
        if comm.Get_rank() != 0:  # rank 0 speaks and writes for the run
            log, progress = (lambda *a, **k: None), False
    g = net.graph
    if g.loss is None:
        raise DnncError(f"network '{g.name}' has no loss to train (add: loss softmax_cross_entropy(logits, label))")
    if len(g.inputs) != 1 or len(g.labels) != 1:
        raise DnncError("dnnc train feeds networks with one input and one label")
    s = settings_from(net, epochs=epochs, batch=batch, lr=lr, optimizer=optimizer)
    ds = datamod.fit(datamod.load(data_path(net, data)), net.inputs[g.inputs[0]], g.classes[g.labels[0]])
    prog = Progress()
    norm = datamod.normalization(ds.x_train)
    if mode == "ps":
        return _train_ps(net, s, ds, norm, comm, servers, staleness, seed, out, resume, log, threads, t_start)
    dist = None
    if comm is not None:
        from .distributed import Distributed

        dist = Distributed(net, s.batch, s.optimizer, comm, seed, schedule=schedule, overrides=overrides,
                           threads=threads or 1)
        model = dist.master
    else:
        model = net.compile(batch=s.batch, seed=seed, schedule=schedule, overrides=overrides, threads=threads)
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
            s = replace(s, batch=int(saved["batch"]), schedule=saved["schedule"], step_size=saved["step_size"],
                        gamma=saved["gamma"], optimizer=Optimizer(**saved["optimizer"]),
                        epochs=epochs if epochs is not None else saved["epochs"])
            if s.batch < 1 or len(norm) != 2 or prog.epoch < 0:
                raise ValueError("out of range")
        except (KeyError, TypeError, ValueError):
            raise DnncError("corrupt checkpoint metadata (cannot resume from it)", path=resume) from None
        if model.batch != s.batch and dist is None:
            model = net.compile(batch=s.batch, seed=seed, schedule=schedule, overrides=overrides, threads=threads)
            restore(model, params)
        model.executable("update" if mode in ("data", "distributed") else "train", s.optimizer)
        for k, v in state.items():
            if k in model.buffers and model.buffers[k].shape == v.shape:
                model.buffers[k][...] = v
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
    show_bar = sys.stderr.isatty() if progress is None else progress
    out = out or f"{g.name}.npz"

    log(f"training {g.name} on {ds.source}: {len(xt)} train / {len(xs)} test, batch {s.batch}, "
        f"{s.epochs} epochs, {s.optimizer.kind} lr {s.optimizer.lr}"
        + (f" momentum {s.optimizer.momentum}" if s.optimizer.kind == "sgd" and s.optimizer.momentum else "")
        + f", {s.schedule} schedule, seed {seed}{_mode_text(mode, n, comm)}; "
        f"compiled in {time.perf_counter() - t_start:.2f} s")
    ev = None
    with _Interrupts() as stop:
        try:
            for epoch in range(prog.epoch, s.epochs):
                order = np.random.default_rng([seed, epoch]).permutation(len(xt))
                t0 = time.perf_counter()

                def hyper_at(k, epoch=epoch, first=prog.global_step - prog.step_in_epoch):
                    rate = lr_at(s.schedule, s.optimizer.lr, epoch, s.epochs, k, steps, s.step_size, s.gamma)
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
                    if show_bar and (k % 5 == 0 or k == steps - 1):
                        _bar(k + 1, steps, t0, sys.stderr)
                dt = time.perf_counter() - t0
                if show_bar:
                    sys.stderr.write("\r" + " " * 70 + "\r")
                ev = evaluator.run(xs, ds.y_test, classes)
                train_loss = prog.loss_sum / steps
                prog.history.append({"epoch": epoch + 1, "train_loss": train_loss, "test_loss": ev.loss,
                                     "accuracy": ev.accuracy, "seconds": dt})
                prog.epoch, prog.step_in_epoch, prog.loss_sum = epoch + 1, 0, 0.0
                if dist is None or dist.rank == 0:
                    save_checkpoint(out, model, s, seed, norm, prog)
                log(f"epoch {epoch + 1:3d}/{s.epochs}  train loss {train_loss:.4f}  test loss {ev.loss:.4f}  "
                    f"accuracy {100 * ev.accuracy:6.2f}%  {dt:6.2f} s  {steps * s.batch / max(dt, 1e-9):8.0f} images/s"
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
        log(f"parameters {'identical' if same else 'DIFFERENT'} on all {dist.size} ranks")
        if not same:
            raise DnncError("the ranks' parameters diverged (this is a bug in dnnc)")
    return Result(model, s, ev, time.perf_counter() - t_start, prog.history, dist.rank if dist else 0)


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


def _train_ps(net, s, ds, norm, comm, servers, staleness, seed, out, resume, log, threads, t_start) -> Result:
    from . import paramserver

    if resume:
        raise DnncError("--resume is not available with --distributed=ps (the servers hold the optimizer state)")
    g = net.graph
    mean, std = norm
    xt, xs = (ds.x_train - mean) / std, (ds.x_test - mean) / std
    yt = ds.y_train.astype(np.float32)
    classes = g.classes[g.labels[0]]
    out = out or f"{g.name}.npz"
    size = comm.Get_size()
    log(f"training {g.name} on {ds.source}: {len(xt)} train / {len(xs)} test, batch {s.batch}, {s.epochs} epochs, "
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
    return Result(model, s, ev, time.perf_counter() - t_start, history, 0)


def _mode_text(mode: str, n: int, comm) -> str:
    if mode == "data":
        return f"; data parallel on {n} threads"
    if mode == "async":
        return f"; Hogwild on {n} threads"
    if mode == "distributed":
        return f"; data parallel on {comm.Get_size()} MPI ranks"
    return ""


class _Snapshot:
    """Copies of the weights, running statistics and optimizer state, to undo one step."""

    def __init__(self, model: Model):
        keep = set(model.graph.params) | set(model.graph.states)
        keep |= {n for n in model.buffers if n.endswith((".v", ".m"))}
        self.live = {n: model.buffers[n] for n in keep if n in model.buffers}
        self.copy = {n: a.copy() for n, a in self.live.items()}

    def save(self) -> None:
        for n, a in self.live.items():
            np.copyto(self.copy[n], a)

    def restore(self) -> None:
        for n, a in self.live.items():
            np.copyto(a, self.copy[n])


def _first_bad(model: Model, loss: float) -> str | None:
    """What went non-finite in the last step: the first parameter (in source order) whose
    gradient, then whose updated value, did, else the loss; None when all is finite."""
    grads = [p for p in model.graph.params if p + ".grad" in model.buffers]
    arrays = [(p, "gradient", model.buffers[p + ".grad"]) for p in grads]
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


def evaluate(net: Network, weights: str, data: str | None = None, batch: int = 256, schedule: bool = True,
             overrides: tuple = (), threads: int | None = None) -> Evaluation:
    g = net.graph
    if g.loss is None or len(g.labels) != 1:
        raise DnncError(f"network '{g.name}' needs a label and a loss to be evaluated")
    params, _, meta = read_checkpoint(weights, net)
    ds = datamod.fit(datamod.load(data_path(net, data)), net.inputs[g.inputs[0]], g.classes[g.labels[0]])
    mean, std = meta["normalization"] if meta else (0.0, 1.0)
    model = compile_for(net, params, weights, batch=min(batch, max(len(ds.x_test), 1)), schedule=schedule,
                        overrides=overrides, threads=threads)
    return Evaluator(model).run((ds.x_test - mean) / std, ds.y_test, g.classes[g.labels[0]])
