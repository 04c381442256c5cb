"""Data sets: IDX files (MNIST's format, gzipped or not), Keras-style .npz, the embedded digits.

A data set is four arrays: training and test examples (float32, scaled to [0, 1]) and their
integer labels. Every fault in a file is a DnncError naming the file and the problem.
"""
from __future__ import annotations

import gzip
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..base.errors import DnncError
from ..base.fileio import no_such_file
from ..base.fileio import _NPY_MAGIC, _ZIP_MAGIC, _check_magic

EMBEDDED = Path(__file__).resolve().parent.parent / "data"
EMBEDDED_IMAGES = EMBEDDED / "mnist10k-images-idx3-ubyte.gz"
EMBEDDED_LABELS = EMBEDDED / "mnist10k-labels-idx1-ubyte.gz"
EMBEDDED_TRAIN = 8000  # the first 8,000 train, the last 2,000 test

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_NAMES = {
    "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    files: dict = field(default_factory=dict)  # x_train, y_train, ... -> its file, for errors


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX array (the MNIST distribution format), gzipped or not."""
    p = Path(path)
    if not p.exists():
        raise no_such_file(p)
    if p.is_dir():
        raise DnncError("is a directory, not an IDX file", path=str(p))
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DnncError(f"corrupt or truncated gzip data ({e})", path=str(p)) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise DnncError(f"not an IDX file: wrong magic number 0x{raw[:4].hex() or '(empty)'}", path=str(p))
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DnncError("truncated IDX header", path=str(p))
    dims = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim)]
    dtype = np.dtype(IDX_TYPES[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) < need:
        raise DnncError(f"truncated: the header promises {dims} values ({need} bytes), the file holds "
                        f"{len(body)} bytes", path=str(p))
    if len(body) > need:
        raise DnncError(f"{len(body) - need} bytes of trailing data after the {dims} values", path=str(p))
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _images(a: np.ndarray, path: str) -> np.ndarray:
    if a.ndim < 2:
        raise DnncError(f"expected images (an array of rank 2 or more), got shape {list(a.shape)}", path=path)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if not np.issubdtype(a.dtype, np.number):
        raise DnncError(f"images hold {a.dtype} values, not numbers", path=path)
    a = a.astype(np.float32)
    if a.size and a.max() > 1.0:
        a = a / 255.0
    return a


def _labels(a: np.ndarray, path: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise DnncError(f"labels must be one number per example, got shape {list(a.shape)}", path=path)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.all(a == np.round(a)):
            raise DnncError("labels must be whole numbers", path=path)
    return a.astype(np.int64)


def _pair(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    x = _images(read_idx(images_path), str(images_path))
    y = _labels(read_idx(labels_path), str(labels_path))
    if len(x) != len(y):
        raise DnncError(f"{len(x)} images but {len(y)} labels in {labels_path}", path=str(images_path))
    return x, y


def embedded() -> Dataset:
    x, y = _pair(EMBEDDED_IMAGES, EMBEDDED_LABELS)
    n = EMBEDDED_TRAIN
    return Dataset(x[:n], y[:n], x[n:], y[n:], "the embedded MNIST digits")


def load(path: str | Path | None = None) -> Dataset:
    """The embedded digits (None), a directory of IDX files, or a Keras-style .npz."""
    if path is None:
        return embedded()
    p = Path(path)
    if not p.exists():
        raise no_such_file(p, "no such file or directory")
    if p.is_dir():
        return _directory(p)
    if p.suffix == ".npz":
        return _npz(p)
    raise DnncError("expected a directory of IDX files (MNIST's names: train-images-idx3-ubyte.gz, ...) "
                    "or an .npz with x_train, y_train, x_test, y_test", path=str(p))


def _find(d: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (d / name).exists():
            return d / name
    alt = stem.replace("-idx", ".idx")  # some mirrors use train-images.idx3-ubyte
    for name in (alt, alt + ".gz"):
        if (d / name).exists():
            return d / name
    return None


def _directory(d: Path) -> Dataset:
    found = {k: _find(d, stem) for k, stem in MNIST_NAMES.items()}
    if all(found.values()):
        xt, yt = _pair(found["x_train"], found["y_train"])
        xs, ys = _pair(found["x_test"], found["y_test"])
        return Dataset(xt, yt, xs, ys, f"{d} (IDX)", {k: str(v) for k, v in found.items()})
    images = sorted(d.glob("*images*idx3*"))
    labels = sorted(d.glob("*labels*idx1*"))
    if len(images) == 1 and len(labels) == 1:  # one set: split it like the embedded digits, 80/20
        x, y = _pair(images[0], labels[0])
        n = int(len(x) * 0.8)
        return Dataset(x[:n], y[:n], x[n:], y[n:], f"{images[0]} (first 80% train, last 20% test)",
                       {"x_train": str(images[0]), "x_test": str(images[0]),
                        "y_train": str(labels[0]), "y_test": str(labels[0])})
    missing = [MNIST_NAMES[k] + "[.gz]" for k, v in found.items() if v is None]
    raise DnncError(f"no MNIST-style IDX files here; missing {', '.join(missing)}", path=str(d))


def _npz(p: Path) -> Dataset:
    _check_magic(p, (_ZIP_MAGIC, _NPY_MAGIC), "an .npz archive")  # numpy would call it pickled data
    try:
        z = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DnncError(f"not a readable .npz file ({e})", path=str(p)) from None
    if not hasattr(z, "files"):
        raise DnncError("is an .npy array, not an .npz archive", path=str(p))
    with z:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
        if missing:
            raise DnncError(f"missing key '{missing[0]}' (an .npz data set holds x_train, y_train, x_test, "
                            f"y_test; it has {', '.join(z.files) or 'nothing'})", path=str(p))
        try:
            xt, yt = _images(z["x_train"], str(p)), _labels(z["y_train"], str(p))
            xs, ys = _images(z["x_test"], str(p)), _labels(z["y_test"], str(p))
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise DnncError(f"unreadable array ({e})", path=str(p)) from None
    for x, y, part in ((xt, yt, "train"), (xs, ys, "test")):
        if len(x) != len(y):
            raise DnncError(f"x_{part} has {len(x)} examples but y_{part} has {len(y)}", path=str(p))
    return Dataset(xt, yt, xs, ys, f"{p} (npz)", dict.fromkeys(("x_train", "y_train", "x_test", "y_test"), str(p)))


def fit(ds: Dataset, input_shape: tuple[int, ...], classes: int | None) -> Dataset:
    """Reshape examples to the network's input shape and check labels against its classes."""
    out = []
    for x, part, key in ((ds.x_train, "training", "x_train"), (ds.x_test, "test", "x_test")):
        per = int(np.prod(x.shape[1:]))
        if per != int(np.prod(input_shape)):
            raise DnncError(f"{part} examples have shape {list(x.shape[1:])}, but the network's input is "
                            f"{list(input_shape)}", path=ds.files.get(key, ds.source))
        out.append(np.ascontiguousarray(x.reshape((len(x),) + tuple(input_shape)), dtype=np.float32))
    if classes is not None:
        for y, part, key in ((ds.y_train, "training", "y_train"), (ds.y_test, "test", "y_test")):
            if len(y) and (y.min() < 0 or y.max() >= classes):
                bad = int(y[(y < 0) | (y >= classes)][0])
                raise DnncError(f"{part} label {bad} is outside the network's {classes} classes (0..{classes - 1})",
                                path=ds.files.get(key, ds.source))
    if len(out[0]) == 0:
        raise DnncError("no training examples", path=ds.files.get("x_train", ds.source))
    return Dataset(out[0], ds.y_train, out[1], ds.y_test, ds.source, ds.files)


def normalization(x_train: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the training examples (one number each, over all values)."""
    mean = float(x_train.mean(dtype=np.float64))
    std = float(x_train.std(dtype=np.float64))
    return mean, std if std > 0 else 1.0
