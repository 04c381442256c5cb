"""Pictures in and out of `dnnc run`: a real PNG blurred and checked against numpy, colour
channels filtered one by one, a digit classified, and bad files refused in one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")

ROOT = Path(__file__).resolve().parent.parent
BLUR = np.array([[0.075, 0.124, 0.075], [0.124, 0.204, 0.124], [0.075, 0.124, 0.075]])


def dnnc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dnnc.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def blur_ref(a: np.ndarray) -> np.ndarray:
    p = np.pad(a, 1)
    return sum(BLUR[r, s] * p[r:r + a.shape[0], s:s + a.shape[1]] for r in range(3) for s in range(3))


def test_blur_a_colour_png_of_any_size(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)  # not the network's declared 64x64
    PIL.fromarray(rgb).save(tmp_path / "photo.png")
    r = dnnc("run", str(ROOT / "examples" / "blur.net"), "--input", "photo.png", "--out", "out.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = np.asarray(PIL.open(tmp_path / "out.png"), dtype=np.float64)
    want = np.stack([blur_ref(rgb[..., c] / 255.0) for c in range(3)], axis=-1)
    assert got.shape == (37, 53, 3)
    assert np.abs(got - np.round(np.clip(want, 0, 1) * 255)).max() <= 1  # 8-bit rounding


def test_sobel_edges_of_a_grayscale_png(tmp_path):
    gray = np.zeros((20, 30), np.uint8)
    gray[:, 15:] = 255  # one vertical edge
    PIL.fromarray(gray).save(tmp_path / "g.png")
    r = dnnc("run", str(ROOT / "examples" / "sobel.net"), "--input", "g.png", "--out", "edges=e.png",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    e = np.asarray(PIL.open(tmp_path / "e.png"), dtype=np.float64)
    assert e.shape == (20, 30) and e[10, 14:16].min() > 200 and e[10, :10].max() == 0


def test_a_digit_picture_is_classified(tmp_path):
    from dnnc.io import data

    ds = data.load(None)
    digit = (ds.x_test[0].reshape(28, 28) * 255).astype(np.uint8)
    big = PIL.fromarray(255 - digit).resize((84, 84))  # dark on light, three times the size
    big.save(tmp_path / "d.png")
    ck = tmp_path / "w.npz"
    assert dnnc("train", str(ROOT / "examples" / "lenet300.net"), "--epochs", "3", "--out", str(ck)).returncode == 0
    r = dnnc("run", str(ROOT / "examples" / "lenet300.net"), "--weights", str(ck), "--input", "d.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("d.png: class ") and f"class {int(ds.y_test[0])} " in r.stdout.split(",")[0]


@pytest.mark.parametrize("name, content, message", [
    ("notpng.png", b"GIF89a this is not a png", "not a PNG image"),
    ("cut.png", None, "damaged or truncated PNG"),
])
def test_bad_pictures_are_one_line(tmp_path, name, content, message):
    if content is None:
        PIL.fromarray(np.zeros((30, 30), np.uint8) + 7).save(tmp_path / "full.png")
        content = (tmp_path / "full.png").read_bytes()[:60]
    (tmp_path / name).write_bytes(content)
    r = dnnc("run", str(ROOT / "examples" / "blur.net"), "--input", name, "--out", "o.png", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "o.png").exists()


def test_training_curves_and_a_filter_grid(tmp_path):
    pytest.importorskip("matplotlib")
    ck, curves = tmp_path / "w.npz", tmp_path / "curves.png"
    r = dnnc("train", str(ROOT / "examples" / "lenet5.net"), "--epochs", "2", "--out", str(ck), "--plot", str(curves))
    assert r.returncode == 0, r.stderr
    assert PIL.open(curves).size == (640, 400)
    r = dnnc("filters", str(ck), "--layer", "c2", "-o", str(tmp_path / "f.png"), "--scale", "4")
    assert r.returncode == 0, r.stderr
    assert "c2.weight: [16, 6, 5, 5] as a 10x10 grid" in r.stdout  # 96 (filter, channel) tiles
    grid = np.asarray(PIL.open(tmp_path / "f.png"))
    assert grid.shape == (10 * (20 + 2) + 2, 10 * (20 + 2) + 2)
    bad = dnnc("filters", str(ck), "--layer", "f3", "-o", str(tmp_path / "g.png"))
    assert bad.returncode == 1 and bad.stderr.strip().endswith("'f3': is not a conv layer (conv weights: c1.weight, "
                                                               "c2.weight)")


def test_info_draws_the_network_with_its_fused_kernels(tmp_path):
    import xml.dom.minidom

    out = tmp_path / "net.svg"
    r = dnnc("info", str(ROOT / "examples" / "lenet5.net"), "--graph", str(out))
    assert r.returncode == 0, r.stderr
    doc = xml.dom.minidom.parse(str(out))  # well-formed SVG
    texts = " ".join(t.toxml() for t in doc.getElementsByTagName("text"))
    assert "kernel c1.conv+maxpool+relu" in texts and "kernel f3.dense+relu" in texts
    assert all(name in texts for name in ("c1.conv", "c2.maxpool", "f4.dense", "logits"))
    assert "[6, 14, 14]" in texts  # c1's output shape per example
