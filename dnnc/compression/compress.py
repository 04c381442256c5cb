"""Deep Compression (Han, Mao and Dally, ICLR 2016): pruning, trained weight sharing, Huffman.

A weight matrix is stored as its kept entries in row-major order, each with

- a cluster index into the layer's codebook (Q: `value_bits` bits, k = 2^value_bits
  entries; entry 0 is the exact zero that filler entries use), and
- a relative index: the distance to the previous kept entry, minus one, in `index_bits` bits
  (P). A gap longer than 2^index_bits becomes filler entries of weight zero.

Both streams are then Huffman coded (H). A layer that keeps every weight stores no indices.
Biases are stored as float32.

The `.dnnz` file: b"DNNZ", a u16 format version, a u32 header length, the header (JSON: the
network, and per layer its shape, kind, counts, bit widths, codebook, code lengths and byte
sizes), the payload (per layer: the value stream, then the index stream, then raw arrays),
and the SHA-256 of everything before it.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import struct

import numpy as np

from ..base.errors import DnncError
from ..base.fileio import atomic_write

MAGIC = b"DNNZ"
VERSION = 1


# ----------------------------------------------------------------------------- pruning

def prune_mask(w: np.ndarray, keep: float) -> np.ndarray:
    """1.0 for the `keep` fraction of weights largest in magnitude, 0.0 for the rest."""
    n = w.size
    k = max(1, int(round(keep * n)))
    if k >= n:
        return np.ones_like(w, dtype=np.float32)
    cut = np.partition(np.abs(w).reshape(-1), n - k)[n - k]
    mask = (np.abs(w) >= cut).astype(np.float32)
    return mask


# ----------------------------------------------------------------------------- weight sharing

def kmeans(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means with linear initialization over [min, max] (the paper's recommendation:
    large weights, though rare, keep centroids of their own). Returns (centroids, labels)."""
    v = values.astype(np.float64)
    if v.size == 0:
        return np.zeros(k), np.zeros(0, np.int64)
    c = np.linspace(v.min(), v.max(), k)
    labels = np.zeros(v.size, np.int64)
    for _ in range(iters):
        labels = nearest(c, v)
        sums = np.bincount(labels, weights=v, minlength=k)
        counts = np.bincount(labels, minlength=k)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        if np.allclose(moved, c):
            break
        c = moved
    return c, nearest(c, v)


def nearest(centroids: np.ndarray, v: np.ndarray) -> np.ndarray:
    order = np.argsort(centroids)
    s = centroids[order]
    mid = (s[1:] + s[:-1]) / 2
    return order[np.searchsorted(mid, v)]


# ----------------------------------------------------------------------------- Huffman

def code_lengths(counts: dict[int, int]) -> dict[int, int]:
    """Huffman code lengths per symbol (a single symbol gets length 1)."""
    if len(counts) == 1:
        return {next(iter(counts)): 1}
    heap = [(c, k, (s,)) for k, (s, c) in enumerate(sorted(counts.items()))]
    heapq.heapify(heap)
    depth = {s: 0 for s in counts}
    tie = len(heap)
    while len(heap) > 1:
        c1, _, a = heapq.heappop(heap)
        c2, _, b = heapq.heappop(heap)
        for s in a + b:
            depth[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, a + b))
        tie += 1
    return depth


def canonical(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Canonical codes (code, length) from lengths: decodable from the lengths alone."""
    code, prev, out = 0, 0, {}
    for s, n in sorted(lengths.items(), key=lambda t: (t[1], t[0])):
        code <<= n - prev
        out[s] = (code, n)
        code += 1
        prev = n
    return out


def huffman_encode(symbols: np.ndarray, lengths: dict[int, int]) -> bytes:
    codes = canonical(lengths)
    bits = "".join(format(c, f"0{n}b") for c, n in (codes[int(s)] for s in symbols))
    return _pack_bitstring(bits)


def huffman_decode(data: bytes, lengths: dict[int, int], count: int) -> np.ndarray:
    table = {(n, c): s for s, (c, n) in canonical(lengths).items()}
    out = np.empty(count, np.int64)
    bits = _unpack_bitstring(data)
    code = n = k = 0
    for b in bits:
        if k == count:
            break
        code = (code << 1) | (b == "1")
        n += 1
        s = table.get((n, code))
        if s is not None:
            out[k] = s
            k += 1
            code = n = 0
    if k != count:
        raise DnncError("corrupt compressed model: a Huffman stream ends early")
    return out


def fixed_encode(symbols: np.ndarray, bits: int) -> bytes:
    return _pack_bitstring("".join(format(int(s), f"0{bits}b") for s in symbols))


def fixed_decode(data: bytes, bits: int, count: int) -> np.ndarray:
    s = _unpack_bitstring(data)
    if len(s) < count * bits:
        raise DnncError("corrupt compressed model: a fixed-width stream ends early")
    return np.array([int(s[k * bits:(k + 1) * bits], 2) for k in range(count)], np.int64)


def _pack_bitstring(bits: str) -> bytes:
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


def _unpack_bitstring(data: bytes) -> str:
    return format(int.from_bytes(data, "big"), f"0{len(data) * 8}b") if data else ""


# ----------------------------------------------------------------------------- sparse layout

def relative_entries(mask_flat: np.ndarray, labels_flat: np.ndarray, index_bits: int):
    """(cluster index per entry, relative index per entry) with filler entries (cluster 0,
    the zero) wherever a gap exceeds 2^index_bits."""
    span = 1 << index_bits
    values, rel = [], []
    prev = -1
    for pos in np.flatnonzero(mask_flat):
        gap = pos - prev
        while gap > span:
            values.append(0)
            rel.append(span - 1)
            gap -= span
        values.append(int(labels_flat[pos]))
        rel.append(gap - 1)
        prev = pos
    return np.array(values, np.int64), np.array(rel, np.int64)


def dense_from_entries(values: np.ndarray, rel: np.ndarray, codebook: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, np.float32)
    pos = np.cumsum(rel + 1) - 1
    if pos.size and pos[-1] >= size:
        raise DnncError("corrupt compressed model: an index points past the end of its layer")
    out[pos] = codebook[values]
    return out


# ----------------------------------------------------------------------------- the file

def encode_layer(name: str, w: np.ndarray, mask: np.ndarray, labels: np.ndarray, codebook: np.ndarray,
                 kind: str, value_bits: int, index_bits: int, huffman: bool = True) -> tuple[dict, bytes]:
    """Header entry and payload of one compressed weight tensor."""
    dense = bool(mask.all())
    flat_mask, flat_labels = mask.reshape(-1), labels.reshape(-1)
    if dense:
        values, rel = flat_labels.astype(np.int64), np.zeros(0, np.int64)
    else:
        values, rel = relative_entries(flat_mask, flat_labels, index_bits)
    streams = {}
    meta = {"name": name, "shape": list(w.shape), "kind": kind, "count": int(w.size),
            "kept": int(flat_mask.sum()), "entries": int(values.size), "value_bits": value_bits,
            "index_bits": 0 if dense else index_bits, "codebook": [float(c) for c in codebook.astype(np.float32)]}
    for key, sym, bits in (("value", values, value_bits), ("index", rel, index_bits)):
        if sym.size == 0:
            streams[key] = b""
            meta[f"{key}_coding"] = "none"
            continue
        fixed = fixed_encode(sym, bits)
        lengths = code_lengths({int(s): int(c) for s, c in zip(*np.unique(sym, return_counts=True))})
        huff = huffman_encode(sym, lengths) if huffman else None
        if huff is not None and len(huff) < len(fixed):
            streams[key] = huff
            meta[f"{key}_coding"] = "huffman"
            meta[f"{key}_lengths"] = {str(s): n for s, n in lengths.items()}
        else:
            streams[key] = fixed
            meta[f"{key}_coding"] = "fixed"
        meta[f"{key}_fixed_bits"] = int(sym.size * bits)
        meta[f"{key}_huffman_bits"] = int(sum(lengths[int(s)] * c for s, c in zip(*np.unique(sym, return_counts=True))))
        meta[f"{key}_bytes"] = len(streams[key])
    meta.setdefault("index_bytes", 0)
    return meta, streams["value"] + streams["index"]


def write(path, network: str, layers: list[tuple[dict, bytes]], raw: dict[str, np.ndarray],
          extra: dict | None = None) -> None:
    """A .dnnz file: compressed layers, raw float32 arrays (biases), and a checksum; `extra`
    (such as the training data's normalization) goes into the header."""

    header = {"format": "dnnz", "version": VERSION, "network": network, "layers": [m for m, _ in layers],
              "raw": [{"name": n, "shape": list(a.shape)} for n, a in raw.items()], **(extra or {})}
    body = b"".join(p for _, p in layers) + b"".join(np.ascontiguousarray(a, "<f4").tobytes() for a in raw.values())
    h = json.dumps(header, separators=(",", ":")).encode()
    blob = MAGIC + struct.pack("<HI", VERSION, len(h)) + h + body
    atomic_write(path, blob + hashlib.sha256(blob).digest())


def is_dnnz(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, dense weights by name) from a .dnnz file; a damaged file is refused."""
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise DnncError(f"cannot read: {e.strerror}", path=str(path)) from None
    if len(data) < 42 or data[:4] != MAGIC:
        raise DnncError("not a dnnc compressed model (.dnnz)", path=str(path))
    if hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise DnncError("corrupt or truncated compressed model (checksum mismatch)", path=str(path))
    version, hlen = struct.unpack("<HI", data[4:10])
    if version != VERSION:
        raise DnncError(f"compressed model format version {version}; this dnnc reads version {VERSION}",
                        path=str(path))
    try:
        header = json.loads(data[10:10 + hlen])
    except ValueError:
        raise DnncError("corrupt compressed model header", path=str(path)) from None
    k = 10 + hlen
    out: dict[str, np.ndarray] = {}
    for m in header["layers"]:
        vb, ib = m.get("value_bytes", 0), m.get("index_bytes", 0)
        vals = _stream(data[k:k + vb], m, "value")
        rel = _stream(data[k + vb:k + vb + ib], m, "index")
        k += vb + ib
        book = np.array(m["codebook"], np.float32)
        if m["index_bits"] == 0:
            flat = book[vals]
        else:
            flat = dense_from_entries(vals, rel, book, m["count"])
        out[m["name"]] = flat.reshape(m["shape"])
    for r in header["raw"]:
        n = int(np.prod(r["shape"])) * 4
        out[r["name"]] = np.frombuffer(data[k:k + n], "<f4").reshape(r["shape"]).copy()
        k += n
    if k != len(data) - 32:
        raise DnncError("corrupt compressed model: its sections do not add up", path=str(path))
    return header, out


def _stream(data: bytes, m: dict, key: str) -> np.ndarray:
    coding = m.get(f"{key}_coding", "none")
    count = m["entries"]
    if coding == "none":
        return np.zeros(0, np.int64)
    bits = m["value_bits"] if key == "value" else m["index_bits"]
    if coding == "fixed":
        return fixed_decode(data, bits, count)
    return huffman_decode(data, {int(s): n for s, n in m[f"{key}_lengths"].items()}, count)


# ----------------------------------------------------------------------------- the table

def table(header: dict) -> list[dict]:
    """The paper's per-layer figures (Han et al., Tables 2-3) from a file's header."""
    rows = []
    for m in header["layers"]:
        n, e = m["count"], m["entries"]
        book = len(m["codebook"]) * 32
        wq = m["value_fixed_bits"] / max(e, 1)
        wh = m["value_huffman_bits"] / max(e, 1)
        iq = m.get("index_fixed_bits", 0) / max(e, 1)
        ih = m.get("index_huffman_bits", 0) / max(e, 1)
        pq = m["value_fixed_bits"] + m.get("index_fixed_bits", 0) + book
        pqh = (m["value_bytes"] + m.get("index_bytes", 0)) * 8 + book
        rows.append({"layer": m["name"], "weights": n, "kept": m["kept"] / n, "weight_bits_pq": wq,
                     "weight_bits_pqh": wh, "index_bits_pq": iq, "index_bits_pqh": ih,
                     "rate_pq": 32 * n / pq, "rate_pqh": 32 * n / pqh, "bits_pq": pq, "bits_pqh": pqh})
    return rows
