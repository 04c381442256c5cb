"""Files: atomic writes (temp file + rename) and safe reading of arrays and weights."""
from __future__ import annotations

import glob
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import DnncError


def no_such_file(path, what: str = "no such file") -> DnncError:
    """The error for a missing file, with the nearest names in its directory when a typo is likely."""
    import difflib

    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        names = [n for n in os.listdir(parent) if not n.startswith(".")]
    except OSError:
        names = []
    near = difflib.get_close_matches(p.name, names, n=2, cutoff=0.7)
    hint = f" (did you mean {' or '.join(str(parent / n) if str(p.parent) != '.' else n for n in near)}?)" if near else ""
    return DnncError(what + hint, path=str(path))


def beside_source(text: str, loc) -> Path:
    """A file named in a .net file: relative to that file's directory (the current directory
    for source given as a string), and never outside it, through '..' or a symbolic link."""
    base = Path(loc.file).parent if loc.file != "<string>" else Path(".")
    if not text or "\0" in text:
        raise DnncError(f"'{text}' is not a file name", loc)
    p = Path(text)
    if p.is_absolute():
        raise DnncError(f"the path '{text}' is absolute; name files relative to the directory of the .net file",
                        loc)
    full = base / p
    root = base.resolve()
    if not full.resolve().is_relative_to(root):
        raise DnncError(f"the path '{text}' leads outside the directory of the .net file ({root}); "
                        f"keep the files it names beside it", loc)
    return full


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write data to path so that readers see the old file or the new one, never a torn one.

    The bytes go to a hidden temporary file beside it, which is synced and renamed over the
    path. A writer killed before the rename leaves the old file whole and its temporary
    file behind; the next write to the path removes temporaries of writers no longer alive.
    """
    path = Path(path)
    parent = writable_place(path)
    _remove_orphans(parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would have made it, not mkstemp's 0600
        os.replace(tmp, path)
        _sync_directory(parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def writable_place(path: str | Path) -> Path:
    """The directory a file is to be written in, refusing a path that names a directory or
    lies in a directory that does not exist."""
    path = Path(path)
    if path.is_dir():
        raise DnncError("is a directory", path=str(path))
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DnncError("the directory does not exist", path=str(path))
    return parent


def _remove_orphans(parent: Path, name: str) -> None:
    """Temporary files of earlier writes to `name` whose writer process has died."""
    for p in parent.glob(f".{glob.escape(name)}.*.tmp"):
        pid = p.name[len(name) + 2:].split(".")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            try:
                p.unlink()
            except OSError:
                pass
        except OSError:
            pass  # alive, or not ours to ask about


def _sync_directory(d: Path) -> None:
    """Make the rename itself durable (a crash after it keeps the new file)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_npy(path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write(path, buf.getvalue())


def save_npz(path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def load_npy(path) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise no_such_file(p)
    _check_magic(p, (_NPY_MAGIC, _ZIP_MAGIC), "an .npy file")
    try:
        a = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DnncError(f"not a readable .npy file ({e})", path=str(p)) from None
    if isinstance(a, np.lib.npyio.NpzFile):
        a.close()
        raise DnncError("is an .npz archive; --input takes one .npy array", path=str(p))
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise DnncError(f"holds {a.dtype} values, not real numbers", path=str(p))
    return a


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _check_magic(p: Path, magics: tuple[bytes, ...], what: str) -> None:
    """numpy reports a file of any other format as 'pickled data'; say what it really is not."""
    if p.is_dir():
        raise DnncError("is a directory", path=str(p))
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise DnncError(f"cannot read ({e.strerror})", path=str(p)) from None
    if not any(head.startswith(m) for m in magics):
        raise DnncError(f"not {what} (it does not start with the format's header)", path=str(p))


def load_npz(path) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.exists():
        raise no_such_file(p)
    _check_magic(p, (_ZIP_MAGIC, _NPY_MAGIC), "an .npz archive")
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # an .npy array, not an archive
            raise DnncError("is an .npy array, not an .npz archive of named parameters", path=str(p))
        with z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DnncError(f"not a readable .npz file ({e})", path=str(p)) from None


def check_weights(arrays: dict, expected: dict[str, tuple[int, ...]], path) -> dict[str, np.ndarray]:
    """The expected arrays, each present, of the right shape and finite."""
    out = {}
    for name, shape in expected.items():
        if name not in arrays:
            raise DnncError(f"missing parameter '{name}'", path=str(path))
        a = arrays[name]
        if tuple(a.shape) != tuple(shape):
            raise DnncError(f"parameter '{name}' has shape {list(a.shape)}, the network needs {list(shape)}",
                            path=str(path))
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
            raise DnncError(f"parameter '{name}' must hold finite floating-point values", path=str(path))
        out[name] = a
    return out
