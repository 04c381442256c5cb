"""The GPU runtime: NVIDIA's driver API through `cuda-bindings` (the `dnnc[cuda]` extra).

A program's buffers live on the device from step to step. `DeviceArrays` is the model's dict
of host arrays with a device copy of each: reading an array through it first brings back a
device copy that is newer, and marks the array as possibly written by the host, so the next
run sends it again. Parameters and optimizer state therefore cross the bus only when the host
looks at them (a checkpoint, `model.params`), inputs once a step, the loss when it is read.

`CudaExecutable` loads a program's PTX into the device's primary context and runs its launch
plan (runtime/ptx.py) on one stream, then waits for it. The first run captures the launches
as a CUDA graph, which every later run replays with one call. A failed kernel is named when
the program was built with checks (each launch is then made and awaited on its own).
"""
from __future__ import annotations

import ctypes
import functools
import re
from functools import lru_cache

import numpy as np

from ..base.dtypes import NP_DTYPE
from ..base.errors import DnncError
from ..base.units import human_bytes
from ..codegen.nvptx import THREADS
from . import ptx as ptxmod

INSTALL = 'pip install "dnnc[cuda]"'
READ_ONLY = ("input", "label", "hyper")  # argument kinds a program never writes


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError:
        raise DnncError(f"the cuda target needs NVIDIA's cuda-bindings: {INSTALL}") from None
    return driver


def check(result, what: str):
    """The values of a driver call's result, or a DnncError naming `what` and the error."""
    drv = _driver()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != drv.CUresult.CUDA_SUCCESS:
        name = drv.cuGetErrorName(err)[1]
        text = drv.cuGetErrorString(err)[1]
        detail = f"{name.decode()}: {text.decode()}" if name and text else str(err)
        raise DnncError(f"{what}: {detail}")
    return values[0] if len(values) == 1 else tuple(values)


class Device:
    """One GPU: its primary context, a stream, and copies and launches on that stream."""

    def __init__(self, ordinal: int = 0):
        drv = self.drv = _driver()
        try:
            started = drv.cuInit(0)
        except Exception as e:  # cuda-bindings finds no libcuda: no driver on this machine
            raise DnncError(f"no NVIDIA driver on this machine ({type(e).__name__}): the cuda target "
                            "needs an NVIDIA GPU and its driver") from None
        check(started, "cannot start the CUDA driver")
        count = check(drv.cuDeviceGetCount(), "cannot count the GPUs")
        if count == 0:
            raise DnncError("no NVIDIA GPU on this machine: the cuda target needs one")
        if not 0 <= ordinal < count:
            raise DnncError(f"no GPU {ordinal}: this machine has {count} (0..{count - 1})")
        self.ordinal = ordinal
        self.dev = check(drv.cuDeviceGet(ordinal), f"cannot open GPU {ordinal}")
        self.name = check(drv.cuDeviceGetName(128, self.dev), "cannot name the GPU").split(b"\0")[0].decode()
        self.ctx = check(drv.cuDevicePrimaryCtxRetain(self.dev), f"cannot make a context on GPU {ordinal}")
        self.use()
        self.stream = check(drv.cuStreamCreate(0), "cannot make a stream")

    def use(self) -> None:
        check(self.drv.cuCtxSetCurrent(self.ctx), "cannot use the GPU's context")

    def free_bytes(self) -> int:
        return int(check(self.drv.cuMemGetInfo(), "cannot read the GPU's memory")[0])

    def alloc(self, nbytes: int, what: str) -> int:
        return int(check(self.drv.cuMemAlloc(max(nbytes, 4)), f"cannot allocate {nbytes} bytes for {what}"))

    def free(self, ptr: int) -> None:
        self.drv.cuMemFree(ptr)

    def upload(self, ptr: int, a: np.ndarray) -> None:
        check(self.drv.cuMemcpyHtoDAsync(ptr, a.ctypes.data, a.nbytes, self.stream), "cannot copy to the GPU")

    def download(self, a: np.ndarray, ptr: int) -> None:
        check(self.drv.cuMemcpyDtoHAsync(a.ctypes.data, ptr, a.nbytes, self.stream), "cannot copy from the GPU")
        self.sync("copying from the GPU")

    def sync(self, what: str) -> None:
        check(self.drv.cuStreamSynchronize(self.stream), what)

    def capture(self, launches):
        """The launches that `launches()` makes, captured as a CUDA graph ready to replay: one
        call of the driver per run instead of one per kernel."""
        drv = self.drv
        check(drv.cuStreamBeginCapture(self.stream, drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
              "cannot capture the launches")
        try:
            launches()
        finally:
            graph = check(drv.cuStreamEndCapture(self.stream), "cannot capture the launches")
        return check(drv.cuGraphInstantiate(graph, 0), "cannot instantiate the launches' graph")

    def replay(self, graph) -> None:
        check(self.drv.cuGraphLaunch(graph, self.stream), "cannot launch the program's graph")

    def module(self, text: str):
        return check(self.drv.cuModuleLoadData(text.encode() + b"\0"), "the driver refused the generated PTX")

    def function(self, module, symbol: str):
        return check(self.drv.cuModuleGetFunction(module, symbol.encode()), f"no kernel {symbol} in the PTX")

    def launch(self, fn, points: int, params: int, what: str) -> None:
        blocks = -(-points // THREADS)
        threads = min(points, THREADS)
        check(self.drv.cuLaunchKernel(fn, blocks, 1, 1, threads, 1, 1, 0, self.stream, params, 0),
              f"cannot launch {what}")


@lru_cache(maxsize=None)
def device(ordinal: int = 0) -> Device:
    return Device(ordinal)


def device_count() -> int:
    """How many GPUs this machine has (an error line when it has no driver or none)."""
    drv = device(0).drv  # starts the driver, and fails as Device does
    return int(check(drv.cuDeviceGetCount(), "cannot count the GPUs"))


class DeviceArrays(dict):
    """Host arrays by name, each with a copy on one GPU (see the module's docstring)."""

    def __init__(self, *args, ordinal: int = 0):
        super().__init__(*args)
        self.ordinal = ordinal
        self.ptrs: dict[str, int] = {}
        self.host_newer: set[str] = set()  # to send before the next run that reads them
        self.device_newer: set[str] = set()  # to bring back before the host reads them
        self.blocks: list[int] = []  # device blocks of packed buffers (`pack`)
        self.in_blocks: set[str] = set()  # the buffers that lie in them

    @property
    def device(self) -> Device:
        return device(self.ordinal)

    def __getitem__(self, name):
        a = super().__getitem__(name)
        if name in self.device_newer:
            self.device.download(a, self.ptrs[name])
            self.device_newer.discard(name)
        if name in self.ptrs:
            self.host_newer.add(name)  # the caller may write it
        return a

    def get(self, name, default=None):
        return self[name] if name in self else default

    def setdefault(self, name, default=None):
        if name not in self:
            self[name] = default
        return self[name]

    def values(self):
        return [self[k] for k in self]

    def items(self):
        return [(k, self[k]) for k in self]

    def __setitem__(self, name, a) -> None:
        if name in self.ptrs and a.nbytes != super().__getitem__(name).nbytes:
            raise DnncError(f"buffer {name} cannot change size on the GPU")
        super().__setitem__(name, a)
        self.device_newer.discard(name)
        if name in self.ptrs:
            self.host_newer.add(name)

    def pointer(self, name: str) -> int:
        """The device copy of array `name` (allocated, and to be sent, on first use)."""
        if name not in self.ptrs:
            self.ptrs[name] = self.device.alloc(super().__getitem__(name).nbytes, f"buffer {name}")
            self.host_newer.add(name)
        return self.ptrs[name]

    def pack(self, names: list[str], flat: np.ndarray) -> "Packed":
        """Lay out the device copies of `names`, views of the one host array `flat`, in one
        block as they lie in `flat`, so that the whole of it moves in one copy each way (the
        gradients that an all-reduce sums). Called before any program allocates them."""
        block = self.device.alloc(flat.nbytes, "the packed buffers")
        self.blocks.append(block)
        lo, hi = flat.ctypes.data, flat.ctypes.data + flat.nbytes
        for n in names:
            a = dict.__getitem__(self, n)
            if n in self.ptrs or not lo <= a.ctypes.data <= a.ctypes.data + a.nbytes <= hi:
                raise AssertionError(f"buffer {n} is not a view of the packed array, or is already on the GPU")
            self.ptrs[n] = block + (a.ctypes.data - lo)
            self.in_blocks.add(n)
            self.host_newer.add(n)
        return Packed(self, list(names), flat, block)

    def send(self, names) -> None:
        """Copy to the device each of `names` the host may have written."""
        dev = self.device
        for n in names:
            if n in self.host_newer:
                dev.upload(self.ptrs[n], super().__getitem__(n))
                self.host_newer.discard(n)

    def written(self, names) -> None:
        """The device has written `names`: the host copies are stale."""
        self.device_newer.update(names)
        self.host_newer.difference_update(names)

    def __del__(self):
        ptrs = getattr(self, "ptrs", {})
        blocks, inside = getattr(self, "blocks", []), getattr(self, "in_blocks", set())
        own = [p for n, p in ptrs.items() if n not in inside] + blocks
        if own:  # the device copies go with the model's buffers
            dev = device(self.ordinal)
            for p in own:
                dev.free(p)


class Packed:
    """Buffers whose device copies lie in one block as their host arrays lie in `flat`."""

    def __init__(self, arrays: DeviceArrays, names: list[str], flat: np.ndarray, block: int):
        self.arrays, self.names, self.flat, self.block = arrays, names, flat, block

    def pull(self) -> None:
        """Make `flat` hold what the device last wrote to the buffers (one copy)."""
        if self.arrays.device_newer.intersection(self.names):
            self.arrays.device.download(self.flat, self.block)
            self.arrays.device_newer.difference_update(self.names)

    def push(self) -> None:
        """Send `flat`, as the host has changed it, to the device (one copy)."""
        self.arrays.device.upload(self.block, self.flat)
        self.arrays.host_newer.difference_update(self.names)


class CudaExecutable:
    """A program loaded on a GPU, bound to `arrays` (a DeviceArrays: a plain dict is copied
    into one); `args` are (name, shape, kind), `workspace` the temporaries' size in elements."""

    def __init__(self, obj: bytes | None, llvm_ir: str | None, entry: str, args: list, workspace: int,
                 arrays: dict, dtype: str = "f32"):
        if obj is None:
            obj = ptxmod.object_code(llvm_ir)
        self.obj, self.entry = obj, entry
        self.args = [(n, tuple(s), k) for n, s, k in args]
        if not isinstance(arrays, DeviceArrays):
            arrays = DeviceArrays(arrays)
        npd = NP_DTYPE[dtype]
        for name, shape, _ in self.args:
            if name not in arrays:
                arrays[name] = np.zeros(shape, npd)
            elif dict.__getitem__(arrays, name).shape != shape:
                raise AssertionError(f"{name}: {dict.__getitem__(arrays, name).shape} != {shape}")
        self.arrays = arrays
        dev = self.device = arrays.device
        item = np.dtype(npd).itemsize
        self.workspace_bytes = workspace * item
        # refused whole, before any allocation: what this program adds to the device
        need = self.workspace_bytes + sum(dict.__getitem__(arrays, n).nbytes for n, _, _ in self.args
                                          if n not in arrays.ptrs)
        free = dev.free_bytes()
        if need > free:
            raise DnncError(f"{entry} needs {human_bytes(need)} of GPU memory (its buffers and temporaries); "
                            f"GPU {dev.ordinal} has {human_bytes(free)} free: use a smaller batch")
        texts, self.launches, self.checks = ptxmod.read_object(obj)
        self.modules = [dev.module(t) for t in texts]
        home = {name: m for m, t in zip(self.modules, texts) for name in re.findall(r"^\.visible \.entry (\S+)\(", t, re.M)}
        self.workspace = dev.alloc(self.workspace_bytes, f"the temporaries of {entry}")
        self.graph = None  # the launches captured as one CUDA graph, on the first run
        self.names = [n for n, _, _ in self.args]
        self.writes = [n for n, _, k in self.args if k not in READ_ONLY]
        self.calls = []
        functions = {}
        for x in self.launches:
            if x.entry not in functions:
                functions[x.entry] = dev.function(home.get(x.entry, self.modules[0]), x.entry)
            ptrs = [self.workspace + off * item if off is not None else arrays.pointer(n) for n, off in x.args]
            self.calls.append((functions[x.entry], x.points, _params(ptrs), x.symbol))

    def set_threads(self, n: int) -> None:
        """Host threads do not matter on the GPU."""

    def run(self) -> None:
        self.arrays.send(self.names)
        dev = self.device
        if self.checks:
            for fn, points, (params, _), symbol in self.calls:
                dev.launch(fn, points, params, symbol)
                dev.sync(f"kernel {symbol} failed")
        else:
            if self.graph is None:
                self.graph = dev.capture(self._launch_all)
            dev.replay(self.graph)
        dev.sync(f"a kernel of {self.entry} failed")
        self.arrays.written(self.writes)

    def _launch_all(self) -> None:
        for fn, points, (params, _), symbol in self.calls:
            self.device.launch(fn, points, params, symbol)

    def kernel(self, symbol: str, buffers: list[str], offsets: dict[str, int]):
        """One launch as a call of no arguments (awaited, so it can be timed alone)."""
        for fn, points, (params, _), sym in self.calls:
            if sym == symbol:
                return functools.partial(self._one, fn, points, params, sym)
        return None

    def _one(self, fn, points, params, symbol) -> None:
        self.device.launch(fn, points, params, symbol)
        self.device.sync(f"kernel {symbol} failed")

    def __del__(self):
        if getattr(self, "workspace", None) is not None:  # a load that failed allocated none
            self.device.free(self.workspace)


def _params(ptrs: list[int]):
    """cuLaunchKernel's kernelParams for pointer arguments: the address of an array of
    pointers, each to one argument's value (the arrays are kept alive beside it)."""
    values = (ctypes.c_uint64 * max(len(ptrs), 1))(*ptrs)
    slots = (ctypes.c_void_p * max(len(ptrs), 1))(*[ctypes.addressof(values) + 8 * i for i in range(len(ptrs))])
    return ctypes.addressof(slots), (values, slots)
