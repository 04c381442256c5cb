"""The Python API: dnnc.load(...) -> Network; Network.compile(batch=B) -> Model."""
from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

import numpy as np

from .base.dtypes import NP_DTYPE
from .base.errors import DnncError, did_you_mean
from .base.fileio import no_such_file
from .base.host import available_memory
from .base.units import human_bytes
from .driver.compile import WEIGHTS_STAMP, Built, weights_changed
from .driver.programs import lower_graph
from .driver.unit import Job
from .front import graph as graphmod
from .front.parse import Module, parse
from .front.settings import optimizer_spec, settings_from
from .io.checkpoint import read_checkpoint, use
from .ir import Program
from .runtime import cache
from .schedule.steps import Schedule, as_schedule, from_block
from .target import get as get_target
from .target import on_device
from .target.base import Target
from .te.optim import HYPER
from .te.sparse import ell, rows_needed
from .te.stmt import RNG_SEED
from .te.names import grad_name



def load(path_or_source: str | Path, network: str | None = None) -> "Network":
    """Parse and check a network from a .net file path or from source text."""
    text, file = _read_source(path_or_source)
    return Network(parse(text, file), network, text)


def _read_source(src) -> tuple[str, str]:
    if isinstance(src, Path) or (isinstance(src, str) and "\n" not in src and "{" not in src):
        p = Path(src)
        if not p.exists():
            raise no_such_file(p)
        if p.is_dir():
            raise DnncError("is a directory, not a .net file", path=str(p))
        try:
            return p.read_text(encoding="utf-8"), str(p)
        except UnicodeDecodeError:
            raise DnncError("not a text file (expected .net source in UTF-8)", path=str(p)) from None
        except OSError as e:  # unreadable: permissions, a special file
            raise DnncError(f"cannot read ({e.strerror or e})", path=str(p)) from None
    return str(src), "<string>"


class Network:
    """A checked network: its layers, tensor shapes and parameters, per example (batch 1)."""

    def __init__(self, module: Module, name: str | None = None, source: str | None = None):
        self.module = module
        self.source = source  # the text, when known: part of the compile cache's key
        self.graph = graphmod.build(module, 1, name)
        self.name = self.graph.name
        self._check_settings()

    def _check_settings(self) -> None:
        """The train { } and schedule { } blocks, checked when the file is, not when used."""

        settings_from(self)
        from_block(self.graph.schedule)
        kernels = [n for n, t in self.graph.tensors.items() if t.kind == "act"]
        for tensor, (_, loc) in self.graph.schedule.items():
            if tensor not in self.graph.tensors:
                raise DnncError(f"schedule: no tensor '{tensor}'{did_you_mean(tensor, kernels)} in this network", loc)

    def with_inputs(self, shapes: dict[str, tuple[int, ...]]) -> "Network":
        """The same network with other input shapes (per example), checked anew: a filter
        compiled for a picture's size."""
        from dataclasses import replace

        syn = next(n for n in self.module.networks if n.name == self.name)
        unknown = set(shapes) - {n for n, _, _ in syn.inputs}
        if unknown:
            raise DnncError(f"network '{self.name}' has no input '{sorted(unknown)[0]}'")
        inputs = tuple((n, tuple(shapes.get(n, s)), loc) for n, s, loc in syn.inputs)
        mod = replace(self.module, networks=tuple(replace(x, inputs=inputs) if x is syn else x
                                                  for x in self.module.networks))
        src = None if self.source is None else self.source + f"\n# inputs {sorted(shapes.items())}"
        return Network(mod, self.name, src)

    def at_batch(self, batch: int, training: bool = False) -> graphmod.Graph:
        if batch < 1:
            raise DnncError(f"batch must be at least 1, got {batch}")
        if batch == 1 and not training:
            return self.graph
        return graphmod.build(self.module, batch, self.name, training)

    @property
    def layers(self):
        return self.graph.layers

    @property
    def inputs(self) -> dict[str, tuple[int, ...]]:
        return {n: self.graph.tensors[n].shape[1:] for n in self.graph.inputs}

    @property
    def outputs(self) -> dict[str, tuple[int, ...]]:
        return {n: self.graph.tensors[n].shape[1:] for n in self.graph.outputs}

    @property
    def params(self) -> dict[str, tuple[int, ...]]:
        return {n: self.graph.param_specs[n].shape for n in self.graph.params}

    def init_params(self, seed: int = 0) -> dict[str, np.ndarray]:
        return init_params(self.graph, seed)

    def program(self, batch: int = 1, with_loss: bool = False) -> Program:
        return lower_graph(self.at_batch(batch), with_loss=with_loss)

    def compile(self, batch: int = 1, seed: int = 0, dtype: str = "f32", threads: int | None = None,
                schedule: Schedule | bool | list = True, sparse: dict[str, int] | None = None,
                checks: bool | None = None, target: str = "cpu", device: int = 0,
                precision: str = "fp32") -> "Model":
        """JIT-compile the forward pass for `batch` examples on `target` (dnnc.target.names()).
        `schedule`: True (the target's defaults), False (plain loop nests), a Schedule, or a
        list of steps (or their printed forms, `tile(c1.conv, vector=j:16)`) over the defaults;
        `threads` (default: every core) run the parallel loops; `sparse` maps dense-layer
        weights to the most nonzeros in a row, to be read in ELL form (see fill_sparse);
        `checks` builds the debug version, which tests every index at run time and aborts
        naming the buffer (default: on when the environment has DNNC_CHECKS=1); `device` picks
        the GPU of target "cuda" (as "cuda:N" does) and `precision` ("fp32", "tf32", "bf16") the
        format of its tensor cores' operands (as "cuda:tf32" does)."""
        return Model(self, batch, seed, dtype, as_schedule(schedule), threads, sparse=sparse, checks=checks,
                     target=on_device(target, device, precision))


def checks_wanted(checks: bool | None = None) -> bool:
    """Whether to build with run-time bounds checks: as asked, else DNNC_CHECKS=1."""
    if checks is not None:
        return bool(checks)
    return os.environ.get("DNNC_CHECKS", "0") not in ("", "0")


def check_memory(g: graphmod.Graph, dtype: str) -> None:
    """Refuse, before allocating, a network whose buffers cannot fit: its inputs, outputs and
    parameters, plus its largest activation (a lower bound on what it needs)."""

    item = np.dtype(NP_DTYPE[dtype]).itemsize
    sizes = {n: int(np.prod(t.shape)) * item for n, t in g.tensors.items()}
    fixed = sum(sizes[n] for n in set(g.inputs) | set(g.labels) | set(g.outputs) | set(g.params) if n in sizes)
    need = fixed + max(sizes.values(), default=0)
    have = available_memory()
    if have is not None and need > have:
        raise DnncError(f"network '{g.name}' at batch {g.batch} needs at least {human_bytes(need)} of memory "
                        f"(inputs, outputs, parameters and its largest activation); {human_bytes(have)} is "
                        f"available: use a smaller batch or input")


def init_params(g: graphmod.Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial values of every parameter, in source order, from one seeded generator."""
    return dict(init_values(g, seed))


def init_values(g: graphmod.Graph, seed: int = 0, into: dict[str, np.ndarray] | None = None):
    """(name, initial value) of each parameter in turn, so a caller copying them into place
    holds one parameter's temporary at a time, not a second copy of the model; random values
    are drawn straight into the arrays of `into` when given."""
    rng = np.random.default_rng(seed)
    for name in g.params:
        spec = g.param_specs[name]
        shape = spec.shape
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
        fan_out = shape[0] * math.prod(shape[2:]) if len(shape) > 1 else shape[0]
        kind, *arg = spec.init
        if name in g.fixed:
            val = g.fixed[name]
        elif kind == "const":
            val = np.full(shape, arg[0])
        elif arg[0] in ("uniform", "he_uniform", "glorot_uniform"):
            lim = {"uniform": arg[1] if len(arg) > 1 else 0.0, "he_uniform": math.sqrt(6.0 / fan_in),
                   "glorot_uniform": math.sqrt(6.0 / (fan_in + fan_out))}[arg[0]]
            val = _draw(lambda n, lim=lim: rng.uniform(-lim, lim, n), shape, (into or {}).get(name))
        elif arg[0] in ("normal", "he_normal", "glorot_normal"):
            std = {"normal": arg[1] if len(arg) > 1 else 0.0, "he_normal": math.sqrt(2.0 / fan_in),
                   "glorot_normal": math.sqrt(2.0 / (fan_in + fan_out))}[arg[0]]
            val = _draw(lambda n, std=std: rng.normal(0.0, std, n), shape, (into or {}).get(name))
        elif arg[0] == "zeros":
            val = np.zeros(shape)
        elif arg[0] == "ones":
            val = np.ones(shape)
        else:
            raise AssertionError(arg)
        yield name, np.ascontiguousarray(val, dtype=np.float32)


def _draw(sample, shape, out: np.ndarray | None = None, chunk: int = 1 << 20) -> np.ndarray:
    """Values of `sample` (float64 draws, in order) stored in chunks into `out` (a new float32
    array if None), so a 100M-parameter layer never has a float64 copy in memory; the same
    values as casting one big draw."""
    out = np.empty(shape, np.float32) if out is None else out
    flat = out.reshape(-1)
    for k in range(0, flat.size, chunk):
        flat[k:k + chunk] = sample(min(chunk, flat.size - k))
    return out


class Params(MutableMapping):
    """Parameters by name, in source order. Assignment copies into the compiled buffers.

    Any access may change them (an array read can be written in place), so each one tells
    the model's forward pass to recompute its weight-only results (`changed`) before its
    next run; that costs one pass over the weights, not one per call."""

    def __init__(self, arrays: dict[str, np.ndarray], names, changed=lambda: None):
        self._a = arrays  # the model's buffers, looked up on every access (a GPU's mirror them)
        self._names = list(names)
        self._changed = changed

    def __getitem__(self, k):
        if k not in self._names:
            raise KeyError(k)
        self._changed()
        return self._a[k]

    def __setitem__(self, k, v):
        if k not in self._names:
            raise KeyError(f"no parameter named {k!r} (have: {', '.join(self._names)})")
        v = np.asarray(v)
        a = self._a[k]
        if v.shape != a.shape:
            raise DnncError(f"parameter {k} has shape {list(a.shape)}, got {list(v.shape)}")
        a[...] = v
        self._changed()

    def __delitem__(self, k):
        raise TypeError("parameters cannot be removed")

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def update_from(self, values: dict) -> None:
        for k, v in values.items():
            self[k] = v


class Model:
    """A network compiled for a batch size: preallocated buffers and native entry points.

    The forward pass is compiled at once; the gradient program and the training step are
    compiled on first use. All share the parameter buffers.
    """

    def __init__(self, net: Network, batch: int, seed: int = 0, dtype: str = "f32", schedule: Schedule = Schedule(),
                 threads: int | None = None, share: dict[str, np.ndarray] | None = None,
                 sparse: dict[str, int] | None = None, checks: bool | None = None, target: str | Target = "cpu"):
        """`share`: arrays to use as this model's own buffers (by name), such as another
        model's parameters and optimizer state, so that replicas train one set of weights."""
        self.network = net
        self.checks = checks_wanted(checks)
        self.threads = max(int(threads), 1) if threads else (os.cpu_count() or 1)
        self.schedule = as_schedule(schedule)
        self.target = get_target(target)
        self.sparse = dict(sparse or {})
        self.batch = batch
        self.dtype = dtype
        self.graph = net.at_batch(batch)
        check_memory(self.graph, dtype)
        self.buffers: dict[str, np.ndarray] = self.target.arrays(share)
        for n in self.graph.params:
            if n not in self.buffers:
                self.buffers[n] = np.zeros(self.graph.param_specs[n].shape, NP_DTYPE[dtype])
        self.buffers.setdefault(WEIGHTS_STAMP, np.zeros(1, np.int64))
        self.params = Params(self.buffers, self.graph.params, self.weights_changed)
        own = {n: self.buffers[n] for n in self.graph.params if n not in (share or {})}
        if own:  # drawn in source order for every parameter; shared ones keep their values
            for n, v in init_values(self.graph, seed, into=own):
                if n in own and v is not own[n]:
                    own[n][...] = v
        for n in self.graph.states:  # running statistics: constants from their declarations
            spec = self.graph.state_specs[n]
            if n not in self.buffers:
                self.buffers[n] = np.full(spec.shape, spec.init[1] if spec.init[0] == "const" else 0.0,
                                          NP_DTYPE[dtype])
        self.states = Params(self.buffers, self.graph.states, self.weights_changed)
        self.seed = seed
        self.steps = 0  # training steps taken, for the random numbers of dropout
        # (mean, std) of the training data, which forward(), loss_and_grad() and train_step()
        # apply to the inputs they are given, as training did: set by load() from a checkpoint
        self.normalization: tuple[float, float] | None = None
        self._train_graph = None
        self._exec: dict = {}
        fwd = self.executable("forward")
        self.compile_seconds = fwd.seconds

    def weights_changed(self) -> None:
        """Say that parameters or running statistics were written directly in `buffers`, so
        the forward pass recomputes its folded and transformed weights before its next run."""
        weights_changed(self.buffers)

    @property
    def program(self):
        """The forward pass's final loop-nest IR."""
        return self.executable("forward").program

    @property
    def stages(self):
        return self.executable("forward").stages

    @property
    def llvm_ir(self) -> str:
        return self.executable("forward").llvm_ir

    def executable(self, kind: str, optimizer=None) -> Built:
        """The compiled program `forward`, `loss` (forward and loss), `grad` (loss and
        gradients), `train` (one step with `optimizer`) or `update` (the optimizer's step
        alone, from the gradients in the `.grad` buffers)."""
        key = (kind, optimizer)
        if key not in self._exec:
            if kind in ("forward", "loss"):
                graph = self.graph
            else:
                if self._train_graph is None:
                    self._train_graph = self.network.at_batch(self.batch, training=True)
                graph = self._train_graph
            job = Job(graph, self.target, kind, optimizer if kind in ("train", "update") else None, self.dtype,
                      self.schedule, tuple(sorted(self.sparse.items())) if kind == "forward" else (), self.checks)
            ckey = None
            if self.network.source is not None:
                ckey = cache.key(source=self.network.source, network=self.network.name, kind=kind,
                                 optimizer=repr(job.optimizer), batch=self.batch, dtype=self.dtype,
                                 schedule=self.schedule.key(), sparse=list(job.sparse), checks=self.checks,
                                 target=self.target.name)
            self._exec[key] = Built(job, self.buffers, self.threads, ckey)
        return self._exec[key]

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.graph.inputs

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.graph.outputs

    def fill_sparse(self) -> None:
        """Lay out the weights named in `sparse` in ELL form for the forward pass (call it
        after setting them; a row with more nonzeros than compiled for is refused)."""

        for w, R in self.sparse.items():
            a = self.params[w]
            if rows_needed(a) > R:
                raise DnncError(f"'{w}' has a row of {rows_needed(a)} nonzeros; compiled for at most {R}")
            vals, cols = ell(a)
            pad = R - vals.shape[0]
            self.buffers[w + ".ell"][...] = np.pad(vals, ((0, pad), (0, 0)))
            self.buffers[w + ".cols"][...] = np.pad(cols, ((0, pad), (0, 0)))
        self.weights_changed()

    def load(self, path) -> "Model":
        """Take the parameters, running statistics (batchnorm's) and input normalization of a
        checkpoint written by `dnnc train` (or of a weights .npz or a compressed .dnnz) and
        return the model: `net.compile(batch=64).load("lenet5.npz")`. A file of another network,
        or one whose arrays do not fit this one, is refused with a DnncError naming the file."""

        arrays, _, meta = read_checkpoint(path, self.network)
        use(self, arrays, meta)
        return self

    def _normalized(self, a: np.ndarray) -> np.ndarray:
        if self.normalization is None:
            return a
        mean, std = self.normalization
        return (a - mean) / std

    def run_batch(self) -> None:
        """Run the compiled forward pass on the current buffers (one native call)."""
        self.executable("forward").run()

    def set_rng(self) -> None:
        """The seed of this step's random numbers (dropout): a function of the seed and step."""

        if RNG_SEED in self.buffers:
            self.buffers[RNG_SEED][0] = (self.seed * 1000003 + self.steps) % (1 << 24)

    def _feed(self, arrays: dict, names) -> None:
        for n in names:
            if n not in arrays:
                raise DnncError(f"missing '{n}' (needs: {', '.join(names)})")
            a = np.asarray(arrays[n], dtype=NP_DTYPE[self.dtype])
            want = self.graph.tensors[n].shape
            if a.shape != want:
                raise DnncError(f"'{n}' must have shape {list(want)} (the compiled batch), got {list(a.shape)}")
            self.buffers[n][...] = self._normalized(a) if n in self.graph.inputs else a

    def loss_and_grad(self, **inputs_and_labels) -> tuple[float, dict[str, np.ndarray]]:
        """The loss on one batch and its gradient for every trainable parameter (keyed like params)."""
        ex = self.executable("grad")
        self._feed(inputs_and_labels, self.graph.inputs + self.graph.labels)
        self.set_rng()
        ex.run()
        # a layer the loss does not depend on is not in the program: its gradient is zero
        # (fixed weights, given in the source, have none)
        grads = {n: self.buffers[grad_name(n)].copy() if grad_name(n) in self.buffers
                 else np.zeros_like(self.buffers[n]) for n in self.graph.params if n not in self.graph.fixed}
        return float(self.buffers["loss"]), grads

    def train_step(self, optimizer="sgd", lr: float | None = None, step: int | None = None,
                   **inputs_and_labels) -> float:
        """One step of training on one batch: forward, backward and update in one native call.

        `optimizer` is written as in a train { } block, `"sgd(lr=0.1, momentum=0.9)"` or
        `"adam"`, or is a dnnc.te.optim.Optimizer; its state (momentum, Adam's moments) lives in
        the model's buffers from step to step. `lr` overrides its learning rate for this step;
        `step` (1-based, default: the steps this model has taken, plus one) drives Adam's bias
        corrections. Returns the loss before the update."""

        optimizer = optimizer_spec(optimizer)
        ex = self.executable("train", optimizer)
        self._feed(inputs_and_labels, self.graph.inputs + self.graph.labels)
        step = self.steps + 1 if step is None else step
        self.buffers[HYPER][...] = optimizer.hyper(step, optimizer.lr if lr is None else lr)
        self.steps += 1
        self.set_rng()
        ex.run()
        return float(self.buffers["loss"])

    def forward(self, **inputs) -> dict[str, np.ndarray]:
        """Outputs for any number of examples, run in chunks of the compiled batch size."""
        arrays = {}
        count = None
        for name in self.inputs:
            if name not in inputs:
                raise DnncError(f"missing input '{name}' (inputs: {', '.join(self.inputs)})")
            ex_shape = self.graph.tensors[name].shape[1:]
            a = np.asarray(inputs[name], dtype=NP_DTYPE[self.dtype])
            if a.shape == ex_shape:
                a = a[None]
            if a.shape[1:] != ex_shape:
                raise DnncError(f"input '{name}' must have shape [N, {', '.join(map(str, ex_shape))}], "
                                f"got {list(a.shape)}")
            a = self._normalized(a)
            if count is not None and a.shape[0] != count:
                raise DnncError("inputs have different numbers of examples")
            count = a.shape[0]
            arrays[name] = a
        extra = set(inputs) - set(self.inputs)
        if extra:
            raise DnncError(f"unknown input '{sorted(extra)[0]}' (inputs: {', '.join(self.inputs)})")
        outs = {n: np.empty((count,) + self.graph.tensors[n].shape[1:], NP_DTYPE[self.dtype])
                for n in self.outputs}
        B = self.batch
        fwd_args = {b.name for b in self.executable("forward").program.args}
        for start in range(0, count, B):
            stop = min(start + B, count)
            for n, a in arrays.items():
                if n not in fwd_args:  # an input only the loss reads (an mse target)
                    continue
                self.buffers[n][: stop - start] = a[start:stop]
                if stop - start < B:
                    self.buffers[n][stop - start:] = 0
            self.run_batch()
            for n in self.outputs:
                outs[n][start:stop] = self.buffers[n][: stop - start]
        return outs
