"""Golden files: the printed IR of the example networks, compared with tests/golden/*.txt.

A deliberate change to the printed IR is accepted by rewriting the files:

    DNNC_UPDATE_GOLDEN=1 python -m pytest -q tests/test_golden.py

and reviewing the diff (git diff tests/golden) before committing it.
"""
from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("DNNC_UPDATE_GOLDEN") == "1"

CASES = {
    "lenet5_c1_loops.txt": ["ir", "examples/lenet5.net", "--stage", "loops", "--layer", "c1"],
    "lenet5_te.txt": ["ir", "examples/lenet5.net", "--stage", "te"],
    "sobel_loops.txt": ["ir", "examples/sobel.net"],
    # Winograd F(2x2, 3x3), chosen by default for VGG-16's 512-channel layers
    "vgg16_conv5_2_winograd_loops.txt": ["ir", "examples/vgg16.net", "--stage", "loops", "--layer", "conv5_2"],
    # batchnorm folded into the conv's weights, the residual add and ReLU in its epilogue ...
    "resnet18_folded_conv_bn_add_relu_loops.txt": ["ir", "examples/resnet18.net", "--layer", "layer1_0_b"],
    # the 7x7 stride-2 stem on 3 channels: lanes along the filters, a row of 7 pixels in registers
    "resnet18_strided_stem_loops.txt": ["ir", "examples/resnet18.net", "--layer", "stem"],
    # ... and the folded weights, computed in the prepare program when the weights change
    "resnet18_folded_conv_bn_prepare_loops.txt": ["ir", "examples/resnet18.net", "--prepare", "--layer",
                                                  "layer1_0_b"],
}


def dnnc_cli(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return r.stdout


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    args = CASES[name]
    actual = dnnc_cli(*args)
    path = GOLDEN / name
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        if not path.exists() or path.read_text() != actual:
            path.write_text(actual)
        return
    assert path.exists(), f"{path} is missing; create it with DNNC_UPDATE_GOLDEN=1"
    expected = path.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            f"tests/golden/{name}", f"dnnc {' '.join(args)}"))
        pytest.fail(f"the printed IR changed (if intended, rerun with DNNC_UPDATE_GOLDEN=1):\n{diff}")


def test_layer_filter_prints_only_that_binding():
    """`--layer c1` shows the kernels of binding c1 (conv, relu, maxpool) and no others."""
    text = (GOLDEN / "lenet5_c1_loops.txt").read_text()
    kernels = [line.split()[1].rstrip(":") for line in text.splitlines() if line.startswith("kernel ")]
    assert kernels == ["c1.conv+maxpool+relu"]  # conv, ReLU and pool as one nest


def test_golden_files_are_all_checked():
    """No stale golden file lingers without a test that compares it."""
    assert sorted(p.name for p in GOLDEN.glob("*.txt")) == sorted(CASES)
