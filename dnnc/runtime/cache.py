"""The compile cache: machine code on disk, keyed by everything that determines it.

An entry is an object file and a small JSON record (the entry point, the buffers it takes,
the workspace size, the object's checksum). The key hashes the network source and the
prelude, what is compiled (forward, gradient, training step and optimizer), the batch size,
dtype and schedule, the source of dnnc itself, the llvmlite version and the host CPU (name
and features). Writes go to a temporary file and are renamed, so processes that compile at
once never see a torn entry; an entry whose checksum does not match is rebuilt.

The directory is $DNNC_CACHE_DIR, else $XDG_CACHE_HOME/dnnc, else ~/.cache/dnnc;
DNNC_CACHE=0 turns the cache off.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from .jit import target_machine

FORMAT = 1


def enabled() -> bool:
    return os.environ.get("DNNC_CACHE", "1") not in ("0", "off", "no", "false")


def directory() -> Path:
    if os.environ.get("DNNC_CACHE_DIR"):
        return Path(os.environ["DNNC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dnnc"


@lru_cache(maxsize=1)
def _compiler_identity() -> str:
    """A hash of dnnc's own code and grammar, the llvmlite version and the host CPU."""
    import llvmlite
    import llvmlite.binding as llvm


    target_machine()  # initializes LLVM's native target
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    files = sorted(list(root.rglob("*.py")) + list(root.rglob("*.net")) + list(root.parent.glob("grammar/*.lark"))
                   + list(root.glob("grammar/*.lark")))
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update(llvmlite.__version__.encode())
    h.update(llvm.get_host_cpu_name().encode())
    h.update(llvm.get_host_cpu_features().flatten().encode())
    return h.hexdigest()


def key(**parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256((_compiler_identity() + text).encode()).hexdigest()[:40]


def load(k: str) -> tuple[dict, bytes] | None:
    """The entry for key k, or None when absent or damaged (a damaged entry is removed)."""
    if not enabled():
        return None
    d = directory()
    meta_path, obj_path = d / f"{k}.json", d / f"{k}.o"
    try:
        meta = json.loads(meta_path.read_text())
        obj = obj_path.read_bytes()
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or hashlib.sha256(obj).hexdigest() != meta.get("sha256"):
        for p in (meta_path, obj_path):
            try:
                p.unlink()
            except OSError:
                pass
        return None
    return meta, obj


def store(k: str, meta: dict, obj: bytes) -> None:
    """Save an entry; failure to write (a read-only home, a full disk) only costs speed."""
    if not enabled():
        return
    d = directory()
    meta = dict(meta, format=FORMAT, sha256=hashlib.sha256(obj).hexdigest())
    try:
        d.mkdir(parents=True, exist_ok=True)
        _atomic(d / f"{k}.o", obj)
        _atomic(d / f"{k}.json", json.dumps(meta).encode())
    except OSError:
        pass


def _atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
