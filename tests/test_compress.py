"""Deep Compression: the codes round-trip, the sizes follow the paper's formula, pruned
weights stay zero through retraining, and a damaged .dnnz is refused."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dnnc
from dnnc.compression import compress
from dnnc.base.errors import DnncError
from dnnc.te.optim import Optimizer

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "examples" / "lenet300.net"


@given(st.lists(st.integers(0, 40), min_size=1, max_size=300))
@settings(max_examples=60, deadline=None)
def test_huffman_round_trips_exactly(symbols):
    s = np.array(symbols)
    values, counts = np.unique(s, return_counts=True)
    lengths = compress.code_lengths(dict(zip(values.tolist(), counts.tolist())))
    assert np.array_equal(compress.huffman_decode(compress.huffman_encode(s, lengths), lengths, len(s)), s)
    # a Huffman code is never longer than a fixed-width one over the same symbols
    width = max(1, math.ceil(math.log2(len(values)))) if len(values) > 1 else 1
    assert sum(lengths[int(x)] for x in s) <= width * len(s)


def test_relative_indices_insert_fillers_past_the_index_width():
    mask = np.zeros(40)
    mask[[0, 3, 20, 39]] = 1
    labels = np.arange(40) % 7 + 1
    values, rel = compress.relative_entries(mask, labels, index_bits=3)  # gaps of at most 8
    assert rel.max() <= 7 and (values == 0).sum() == 4  # fillers: gaps 17 = 8+8+1 and 19 = 8+8+3
    book = np.arange(8, dtype=np.float32)
    dense = compress.dense_from_entries(values, rel, book, 40)
    np.testing.assert_array_equal(dense, np.where(mask > 0, book[labels], 0))


def test_compression_rate_of_an_unpruned_quantized_layer_follows_the_formula(tmp_path):
    """r = n b / (n log2(k) + k b), with b = 32, against the bytes actually written."""
    n, k = 6000, 16
    rng = np.random.default_rng(0)
    w = rng.normal(size=(60, 100)).astype(np.float32)
    book, labels = compress.kmeans(w.reshape(-1), k)
    meta, payload = compress.encode_layer("w", w, np.ones_like(w), labels.reshape(w.shape), book, "dense",
                                          int(math.log2(k)), 5, huffman=False)
    assert meta["index_bits"] == 0 and meta["index_coding"] == "none"  # unpruned: no indices
    assert len(payload) == n * math.log2(k) / 8  # n log2(k) bits, fixed width
    size_bits = len(payload) * 8 + len(meta["codebook"]) * 32
    assert 32 * n / size_bits == pytest.approx(n * 32 / (n * math.log2(k) + k * 32))
    row = compress.table({"layers": [meta]})[0]
    assert row["rate_pq"] == pytest.approx(n * 32 / (n * math.log2(k) + k * 32))
    path = tmp_path / "w.dnnz"
    compress.write(path, "t", [(meta, payload)], {})
    _, got = compress.read(path)
    np.testing.assert_array_equal(got["w"], book.astype(np.float32)[labels].reshape(w.shape))


def test_kmeans_uses_linear_initialization_and_converges():
    v = np.concatenate([np.full(50, -1.0), np.full(50, 0.5), np.full(3, 4.0)])
    c, labels = compress.kmeans(v, 3)
    assert sorted(np.round(c, 6)) == [-1.0, 0.5, 4.0]  # the rare large weights keep a centroid
    assert np.array_equal(c[labels], v)


def test_pruned_connections_stay_zero_through_training():
    net = dnnc.load(MLP)
    m = net.compile(batch=8, threads=1)
    mask = compress.prune_mask(m.params["h1.weight"], 0.1)
    m.buffers["h1.weight"] *= mask
    opt = Optimizer("sgd", 0.1, 0.9, masked=("h1.weight",))
    ex = m.executable("train", opt)
    m.buffers["h1.weight.mask"][...] = mask
    rng = np.random.default_rng(0)
    before = m.params["h1.weight"].copy()
    for step in range(5):
        m.train_step(opt, step=step + 1, image=rng.normal(size=(8, 1, 28, 28)), digit=rng.integers(0, 10, 8))
    after = m.params["h1.weight"]
    assert np.all(after[mask == 0] == 0) and not np.array_equal(after[mask > 0], before[mask > 0])
    assert ex is m.executable("train", opt)


def test_damaged_files_are_refused(tmp_path):
    good = tmp_path / "m.dnnz"
    w = np.ones((4, 4), np.float32)
    book, labels = compress.kmeans(w.reshape(-1), 2)
    compress.write(good, "t", [compress.encode_layer("w", w, np.ones_like(w), labels.reshape(4, 4), book,
                                                     "dense", 1, 5)], {"b": np.zeros(4, np.float32)})
    data = good.read_bytes()
    cases = {"truncated.dnnz": data[:-7], "flipped.dnnz": data[:20] + bytes([data[20] ^ 1]) + data[21:],
             "other.dnnz": b"PK\x03\x04" + data[4:]}
    messages = {"truncated.dnnz": "checksum", "flipped.dnnz": "checksum", "other.dnnz": "not a dnnc compressed model"}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(DnncError, match=messages[name]):
            compress.read(tmp_path / name)


def test_cli_compresses_evaluates_and_prints_the_table(tmp_path):
    """A short end-to-end run on the MLP: compress, info, eval (retraining kept short)."""
    ck = tmp_path / "w.npz"
    cli = [sys.executable, "-m", "dnnc.cli"]
    r = subprocess.run(cli + ["train", str(MLP), "--epochs", "2", "--out", str(ck)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "m.dnnz"
    r = subprocess.run(cli + ["compress", str(MLP), "--weights", str(ck), "--retrain", "1", "--prune", "0.9",
                              "--clusters", "dense=16", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "h1.weight" in r.stdout and "compress rate (P+Q+H)" in r.stdout
    info = subprocess.run(cli + ["info", str(out)], capture_output=True, text=True)
    assert info.returncode == 0 and "10.0%" in info.stdout  # --prune 0.9 keeps 10%
    ev = subprocess.run(cli + ["eval", str(MLP), "--weights", str(out)], capture_output=True, text=True)
    assert ev.returncode == 0 and ev.stdout.startswith("accuracy ")
    acc = float(ev.stdout.split()[1].rstrip("%"))
    assert acc > 80  # two epochs of training and a 10x pruning still classify digits
    bad = subprocess.run(cli + ["compress", str(MLP), "--weights", str(ck), "--prune", "1.5", "-o", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--prune" in bad.stderr


def test_sparse_ell_layers_compute_what_the_dense_ones_do():
    """In the interpreter (float64) and the JIT; a column index outside the input contributes
    nothing instead of reading outside it."""
    from dnnc.ir import interp
    from dnnc.driver.programs import lower_graph
    from dnnc.te.sparse import ell, rows_needed

    net = dnnc.load(MLP)
    dense = net.compile(batch=3, threads=1)
    w = dense.params["h1.weight"] * compress.prune_mask(dense.params["h1.weight"], 0.03)
    dense.params["h1.weight"] = w
    sparse = net.compile(batch=3, threads=1, sparse={"h1.weight": rows_needed(w)})
    sparse.params.update_from(dense.params)
    sparse.fill_sparse()
    x = np.random.default_rng(1).random((3, 1, 28, 28)).astype(np.float32)
    want = dense.forward(image=x)["logits"].copy()
    np.testing.assert_allclose(sparse.forward(image=x)["logits"], want, rtol=1e-5, atol=1e-5)
    prog = lower_graph(net.at_batch(3), sparse={"h1.weight": rows_needed(w)}, dtype="f64", schedule=False)
    arrays = {k: np.asarray(v, np.float64) for k, v in sparse.buffers.items()}
    arrays["image"] = x.astype(np.float64)
    np.testing.assert_allclose(interp.run(prog, arrays)["logits"], want, rtol=1e-4, atol=1e-5)
    vals, cols = ell(w)
    cols[0, 0] = 1e6  # a damaged index: its term drops out, nothing is read past x
    sparse.buffers["h1.weight.cols"][...] = cols
    vals0 = sparse.buffers["h1.weight.ell"][0, 0]
    sparse.buffers["h1.weight.ell"][0, 0] = 0.0  # the same layer without that term
    ref = sparse.forward(image=x)["logits"].copy()
    sparse.buffers["h1.weight.ell"][0, 0] = vals0
    np.testing.assert_array_equal(sparse.forward(image=x)["logits"], ref)


def test_density_chooses_sparse_kernels():
    from dnnc.te.sparse import choose

    rng = np.random.default_rng(0)
    big = rng.normal(size=(1024, 1024)).astype(np.float32)  # 4 MiB: bound by memory when dense
    small = rng.normal(size=(300, 784)).astype(np.float32)
    params = {"a": big * compress.prune_mask(big, 0.08), "b": small * compress.prune_mask(small, 0.08),
              "c": small * compress.prune_mask(small, 0.02)}
    assert set(choose(params, ["a", "b", "c"], 1 << 20)) == {"a", "c"}  # a cache of 1 MiB per core
    assert set(choose(params, ["a", "b", "c"], 8 << 20)) == {"c"}  # 8 MiB: the big weight fits, stays dense
