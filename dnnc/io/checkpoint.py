"""Checkpoints: what `dnnc train` writes and what `eval`, `run`, `export` and Model.load read.

A checkpoint is an .npz archive: every parameter and running statistic by name, the
optimizer's state as `state:NAME`, and a JSON record `__meta__` (network, epoch, step, seed,
input normalization, settings, history). A weights file is the same archive without the
optimizer state and the record; a compressed `.dnnz` is read in their place. The settings
name the learning-rate decay `lr_decay`; a record written before that names it `schedule`,
and is read the same.
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..base.errors import DnncError
from ..base.fileio import check_weights, load_npz, save_npz, writable_place
from ..compression import compress
from ..target import get as get_target
from ..te.sparse import choose

META = "__meta__"
STATE = "state:"


def save_checkpoint(path, model, s, seed: int, norm, progress) -> None:
    """Parameters, running statistics, optimizer state and the run's record (Settings `s`,
    Progress `progress`), written atomically."""
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


def read_checkpoint(path, net) -> tuple[dict, dict, dict | None]:
    """(parameters and running statistics, optimizer state, meta or None) from an .npz or a
    compressed .dnnz, checked against the network."""
    expected = dict(net.params)
    expected.update({n: net.graph.state_specs[n].shape for n in net.graph.states})
    if compress.is_dnnz(path):
        header, arrays = compress.read(path)
        if header.get("network") != net.name:
            raise DnncError(f"holds a compressed '{header.get('network')}', not '{net.name}'", path=str(path))
        norm = header.get("normalization")
        meta = {"normalization": _normalization(norm, path)} if norm else None
        return check_weights(arrays, expected, path), {}, meta
    arrays = load_npz(path)
    meta = None
    if META in arrays:
        meta = _meta(arrays[META], path)
        if meta.get("network", net.name) != net.name:
            raise DnncError(f"is a checkpoint of network '{meta.get('network')}', not '{net.name}'", path=str(path))
        if "normalization" in meta:
            meta["normalization"] = _normalization(meta["normalization"], path)
        saved = meta.get("settings")
        if isinstance(saved, dict) and "schedule" in saved and "lr_decay" not in saved:  # written before the rename
            saved["lr_decay"] = saved.pop("schedule")
    params = check_weights(arrays, expected, path)
    state = {k[len(STATE):]: v for k, v in arrays.items() if k.startswith(STATE)}
    return params, state, meta


def _meta(raw: np.ndarray, path) -> dict:
    try:
        meta = json.loads(bytes(raw.astype(np.uint8)).decode())
        if not (isinstance(meta, dict) and meta.get("format") == "dnnc-checkpoint"):
            raise ValueError("not a dnnc record")
    except (ValueError, UnicodeDecodeError, TypeError):
        raise DnncError("corrupt checkpoint metadata", path=str(path)) from None
    return meta


def _normalization(norm, path) -> tuple[float, float]:
    """The training set's (mean, std): two finite numbers, std above zero."""
    try:
        mean, std = (float(v) for v in norm)
    except (TypeError, ValueError):
        mean, std = math.nan, math.nan
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise DnncError(f"corrupt checkpoint metadata (normalization {norm!r})", path=str(path))
    return mean, std


def restore(model, arrays: dict) -> None:
    """Parameters and running statistics from checked checkpoint arrays."""
    for n, a in arrays.items():
        (model.params if n in model.params else model.states)[n] = a


def use(model, arrays: dict, meta: dict | None) -> None:
    """Give a model a checkpoint's weights and its input normalization (None: inputs as given)."""
    restore(model, arrays)
    model.fill_sparse()
    model.normalization = meta["normalization"] if meta and "normalization" in meta else None


def compile_for(net, path, **options):
    """A model holding the checked weights of `path` and its normalization; a compressed
    model's sparse enough dense layers are read in ELL form (passes/sparse.py chooses by
    density)."""
    arrays, _, meta = read_checkpoint(path, net)
    sparse = choose(arrays, [p for p, s in net.params.items() if len(s) == 2], get_target(options.get("target", "cpu")).machine.l2_bytes) \
        if compress.is_dnnz(path) else {}
    model = net.compile(sparse=sparse, **options)
    use(model, arrays, meta)
    return model


def check_overwrite(path, net, flag: str = "--out") -> None:
    """A checkpoint or weights file of `net` is to be written to `path` (by training, or by
    `dnnc import` as `flag`): refuse, before any work, a place it cannot write and a file it must
    not replace. A checkpoint or weights file of the same network may be replaced; anything
    else (another network's checkpoint, a compressed model, a file that is no checkpoint) stays
    as it is."""
    p = Path(path)
    writable_place(p)
    if not p.exists():
        return
    how = f"choose another {flag}, or remove the file to overwrite it"
    if compress.is_dnnz(p):
        raise DnncError(f"holds a compressed model, not a training checkpoint: {how}", path=str(p))
    try:
        z = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):  # not an .npz (text, pickle, damaged)
        z = None
    if not isinstance(z, np.lib.npyio.NpzFile):  # an .npy array is no checkpoint either
        raise DnncError(f"is not a dnnc checkpoint: {how}", path=str(p))
    with z:  # only the record is read, not every array
        names = set(z.files)
        try:
            meta = _meta(z[META], p) if META in names else None
        except (DnncError, ValueError, OSError, zipfile.BadZipFile):
            raise DnncError(f"holds a checkpoint with corrupt metadata: {how}", path=str(p)) from None
    if meta is not None:
        if meta.get("network") != net.name:
            raise DnncError(f"holds a checkpoint of network '{meta.get('network')}', not '{net.name}': {how}",
                            path=str(p))
        return
    mine = set(net.params) | set(net.graph.states)
    if not names <= mine | {n for n in names if n.startswith(STATE)}:
        other = sorted(names - mine)[0]
        raise DnncError(f"holds weights of another network ('{other}' is no parameter of '{net.name}'): {how}",
                        path=str(p))
