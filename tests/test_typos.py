"""A new user's typos: every command of the README with its command name, its .net file or its
first flag mistyped ends in one line that says what to do (the nearest right name, or what is
required), with status 2 for the command line and 1 for a missing file, and no traceback."""
from __future__ import annotations

from test_errors import assert_clean_failure, dnnc_cli_many

# the README's commands, one or more per dnnc command, with the files they name
COMMANDS = [
    "check examples/lenet5.net",
    "info examples/vgg16.net --batch 2 --training",
    "info examples/lenet5.net --graph docs/x.svg",
    "ir examples/lenet5.net --grad --stage fuse_pool --layer c1",
    "run examples/lenet5.net --weights lenet5.npz --input examples/digits.npy",
    "run examples/blur.net --input docs/digits.png --out docs/x.png",
    "train examples/lenet5.net --epochs 3 --lr 0.05 --optimizer adam --seed 1 --out run.npz",
    "train examples/lenet5.net --out lenet5.npz --plot docs/x.png",
    "eval examples/lenet5.net --weights lenet5.npz",
    "bench examples/lenet5.net --batch 64 --training --per-layer",
    "compile examples/lenet5.net --out x.o --batch 1",
    "compress examples/lenet300.net --weights W.npz --prune 0.9 -o M.dnnz",
    "export examples/lenet5.net --weights W.npz -o x.onnx",
    "import m.onnx --out x.net --weights-out W.npz",
    "filters W.npz --layer c1 -o x.png --scale 12",
]


def _swap(word: str) -> str:
    """Two neighbouring letters exchanged, in the middle of a word (train -> trian)."""
    k = len(word) // 2
    return word[:k - 1] + word[k] + word[k - 1] + word[k + 1:]


def _cases():
    cases = []
    for cmd in COMMANDS:
        words = cmd.split()
        cases.append((f"command {words[0]}", [_swap(words[0])] + words[1:], 2, f"did you mean '{words[0]}'?"))
        net = next((w for w in words if w.endswith(".net") and w.startswith("examples/")), None)
        if net:
            stem = net[:-len(".net")]
            k = len(stem) - 2
            typo = stem[:k] + stem[k + 1:] + ".net"  # a letter left out: lenet5 -> lent5
            cases.append((f"{words[0]} file {net}", [typo if w == net else w for w in words], 1,
                          f"{typo}: error: no such file (did you mean {net}"))
        flag = next((w for w in words[1:] if w.startswith("--") and len(w) > 5), None)
        if flag:
            cases.append((f"{words[0]} flag {flag}", [_swap(flag) if w == flag else w for w in words], 2,
                          f"did you mean '{flag}'?|the following arguments are required: {flag}|required: -o/{flag}"))
    return cases


CASES = _cases()


def test_typos_say_what_to_do():
    assert len(CASES) >= 40
    results = dnnc_cli_many([argv for _, argv, _, _ in CASES])
    for (what, argv, code, fragments), r in zip(CASES, results):
        lines = assert_clean_failure(r, code)
        assert len(lines) == 1, (what, lines)
        assert any(f in lines[0] for f in fragments.split("|")), (what, argv, lines)
