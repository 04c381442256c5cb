"""Ahead-of-time compilation: `dnnc compile` writes an object file and a C header; a C program
linked against them computes what the JIT computes."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dnnc
from dnnc.codegen.llvm import symbol

ROOT = Path(__file__).resolve().parent.parent
CC = shutil.which("cc") or shutil.which("gcc")

C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "{header}"

static float *take(FILE *f, size_t n)
{{
    float *p = malloc(n * sizeof(float) + 1);
    if (!p || fread(p, sizeof(float), n, f) != n) {{
        fprintf(stderr, "short read\n");
        exit(3);
    }}
    return p;
}}

int main(int argc, char **argv)
{{
    if (argc != 3) return 2;
    FILE *in = fopen(argv[1], "rb");
    if (!in) return 4;
{reads}
    fclose(in);
    float *workspace = calloc({up}_WORKSPACE_FLOATS + 1, sizeof(float));
{allocs}
    {name}_set_threads(2);  /* the pool in the object file: two calls, then stop it */
    {name}_forward({call});
    {name}_forward({call});
    {name}_stop_threads();
    FILE *out = fopen(argv[2], "wb");
    if (!out) return 5;
{writes}
    fclose(out);
    return 0;
}}
"""


def prototype(header: str, name: str) -> list[tuple[bool, str]]:
    """(is_const, C name) of each argument of NAME_forward, in order, read from the header."""
    m = re.search(rf"void {name}_forward\((.*?)\);", header, re.S)
    assert m, header
    args = [a.strip() for a in m.group(1).split(",")]
    out = []
    for a in args:
        am = re.fullmatch(r"(const )?float \*(\w+)", a)
        assert am, a
        out.append((am.group(1) is not None, am.group(2)))
    return out


def c_program(header_name: str, name: str, args: list[tuple[bool, str]]) -> str:
    up = name.upper()
    inputs = [a for const, a in args if const]
    outputs = [a for const, a in args if not const and a != "workspace"]
    reads = "\n".join(f"    float *{a} = take(in, {up}_{a.upper()}_FLOATS);" for a in inputs)
    allocs = "\n".join(f"    float *{a} = calloc({up}_{a.upper()}_FLOATS, sizeof(float));" for a in outputs)
    writes = "\n".join(f"    fwrite({a}, sizeof(float), {up}_{a.upper()}_FLOATS, out);" for a in outputs)
    call = ", ".join(a for _, a in args)
    return C_PROGRAM.format(header=header_name, reads=reads, allocs=allocs, writes=writes, up=up, name=name,
                            call=call)


def dnnc_compile(out: Path, *extra: str) -> None:
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "compile", "examples/lenet5.net", "-o", str(out), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out} and {out.with_suffix('.h')}" in r.stdout


@pytest.mark.parametrize("batch", [None, 32])  # 32: parallel loops, so the pool runs
def test_c_program_matches_jit(tmp_path, batch):
    if CC is None:
        pytest.skip("no C compiler (cc or gcc)")
    obj = tmp_path / "lenet5.o"
    dnnc_compile(obj, *(["--batch", str(batch)] if batch else []))
    header_path = obj.with_suffix(".h")
    assert obj.stat().st_size > 0 and header_path.exists()
    assert obj.read_bytes()[:4] == b"\x7fELF" or sys.platform != "linux"
    header = header_path.read_text()
    B = batch or 1
    assert f"#define LENET5_BATCH {B}" in header

    net = dnnc.load(ROOT / "examples" / "lenet5.net")
    args = prototype(header, "lenet5")
    names = {symbol(n): n for n in list(net.params) + ["image", "logits"]}
    assert [a for _, a in args] == [symbol(n) for n in ["image", *net.params, "logits"]] + ["workspace"]

    # inputs and parameters, in the prototype's order, as one raw float32 file
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.0, (B, 1, 28, 28)).astype(np.float32)
    params = {n: rng.normal(0.0, 0.2, s).astype(np.float32) for n, s in net.params.items()}
    values = {"image": x, **params}
    blob = b"".join(np.ascontiguousarray(values[names[a]], np.float32).tobytes() for const, a in args if const)
    (tmp_path / "in.bin").write_bytes(blob)

    (tmp_path / "prog.c").write_text(c_program(header_path.name, "lenet5", args))
    cc = subprocess.run([CC, "prog.c", "lenet5.o", "-lm", "-lpthread", "-o", "prog"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120)
    assert cc.returncode == 0, cc.stderr
    run = subprocess.run(["./prog", "in.bin", "out.bin"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    c_logits = np.fromfile(tmp_path / "out.bin", np.float32).reshape(B, 10)

    model = net.compile(batch=B)
    for n, v in params.items():
        model.params[n] = v
    jit_logits = model.forward(image=x)["logits"]
    assert np.isfinite(c_logits).all() and np.abs(c_logits).max() > 1e-3
    np.testing.assert_allclose(c_logits, jit_logits, rtol=1e-5, atol=1e-5)


def test_header_compiles_standalone(tmp_path):
    """The header is valid C on its own (include guard, prototype) and can be included twice."""
    if CC is None:
        pytest.skip("no C compiler (cc or gcc)")
    obj = tmp_path / "lenet5.o"
    dnnc_compile(obj)
    (tmp_path / "t.c").write_text('#include "lenet5.h"\n#include "lenet5.h"\n'
                                  "int main(void) { return LENET5_BATCH == 1 ? 0 : 1; }\n")
    cc = subprocess.run([CC, "-Wall", "-Werror", "-c", "t.c", "-o", "t.o"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120)
    assert cc.returncode == 0, cc.stderr
