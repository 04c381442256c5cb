"""The command line as a user reads it: help for every argument with its default, no
abbreviated flags, one spelling of the output flag, and training that says how far it has got
(a line per epoch; off a terminal a status line at least every 10 s) with times in human units."""
from __future__ import annotations

import argparse
import importlib
import re

import pytest

import dnnc
from dnnc.tools.bench import KernelTime, Report, render
from dnnc.cli.parser import make_parser
from dnnc.base.units import human_seconds

from test_errors import assert_clean_failure, dnnc_cli, dnnc_cli_many
from test_train import LENET300, LENET300_ARG, quiet, write_npz

trainmod = importlib.import_module("dnnc.training.train")
statusmod = importlib.import_module("dnnc.training.status")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    return make_parser().commands


# ----------------------------------------------------------------------------- --help

def test_every_argument_has_help_and_shows_its_default():
    for command, parser in {"(dnnc itself)": make_parser(), **subparsers()}.items():
        assert parser.allow_abbrev is False, command
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"dnnc {command} {name} has no help"
            shown = parser.formatter_class(command)._get_help_string(action)
            trivial = action.default is None or action.default is False or action.default == []
            if action.option_strings and not trivial and action.default is not argparse.SUPPRESS:
                assert "default" in shown, f"dnnc {command} {name}: default {action.default!r} not shown"
                assert "default" in text, command
    assert make_parser().allow_abbrev is False


def test_train_help_explains_each_setting():
    r = dnnc_cli("train", "--help")
    assert r.returncode == 0
    for flag, fragment in [("net", "the network's .net file"), ("--epochs EPOCHS", "epochs to train"),
                           ("--batch BATCH", "examples per step"), ("--lr LR", "learning rate"),
                           ("--seed SEED", "(default: 0)"), ("-o CKPT.npz, --out CKPT.npz", "the --resume file")]:
        block = re.search(rf"^  {re.escape(flag)}\b(.*?)(?=^  \S|\Z)", r.stdout, re.M | re.S)
        assert block and fragment in " ".join(block.group(1).split()), (flag, r.stdout)


def test_flags_are_never_abbreviated():
    argvs = [["train", "examples/lenet5.net", "--epoch", "3"], ["bench", "examples/lenet5.net", "--per", "3"],
             ["run", "examples/lenet5.net", "--input", "examples/digits.npy", "--output", "y.npy"]]
    hints = ["did you mean '--epochs'?", "did you mean '--per-layer'?", "did you mean '--out'?"]
    for argv, hint, r in zip(argvs, hints, dnnc_cli_many(argvs)):
        lines = assert_clean_failure(r, 2)
        assert lines == [f"dnnc: error: unrecognized arguments: {' '.join(argv[-2:])}; {hint} "
                         f"(see 'dnnc {argv[0]} --help')"], lines


def test_one_spelling_of_the_output_flag():
    for command, parser in subparsers().items():
        flags = {o for a in parser._actions for o in a.option_strings}
        assert "--output" not in flags, command
        outs = [a for a in parser._actions if "--out" in a.option_strings]
        if command in ("compile", "run", "export", "import", "filters", "compress", "train"):
            assert outs and outs[0].option_strings == ["-o", "--out"], command


# ----------------------------------------------------------------------------- training's log

def test_training_log_header_and_epoch_lines(tmp_path):
    from dnnc.io import data as datamod

    small = write_npz(tmp_path / "small.npz", datamod.embedded())
    r = dnnc_cli("train", LENET300_ARG, "--data", small, "--epochs", "1", "--batch", "32", "--out",
                 tmp_path / "a.npz")
    assert r.returncode == 0, r.stderr
    head, epoch, final = r.stdout.splitlines()
    assert head.startswith(f"training lenet300 on {small} (npz): 320 train / 64 test examples, batch 32, 1 epoch, "), head
    assert head.count(" train / ") == 1 and "epochs" not in head, "the counts once; 1 epoch, not 1 epochs"
    assert re.search(r"compiled in [\d.]+ (us|ms|s|min)$", head), head
    assert re.match(r"epoch +1/1  train loss [\d.]+  test loss [\d.]+  accuracy +[\d.]+%  +[\d.]+ (us|ms|s|min)"
                    r"  +\d+ images/s$", epoch), epoch
    assert re.search(r", [\d.]+ (us|ms|s|min) in all; checkpoint ", final), final


def test_status_lines_off_a_terminal(monkeypatch, capsys, tmp_path):
    from dnnc.io import data as datamod

    monkeypatch.setattr(statusmod, "STATUS_SECONDS", 0.0)  # a line every step, not every 10 s
    small = write_npz(tmp_path / "small.npz", datamod.embedded())
    trainmod.train(dnnc.load(LENET300), str(small), epochs=2, batch=32, out=str(tmp_path / "s.npz"), log=quiet)
    lines = capsys.readouterr().err.splitlines()  # pytest's stderr is no terminal: lines, not a bar
    assert len(lines) == 20, lines
    pattern = re.compile(r"  epoch (\d)/2  step (\d+)/10  loss \d+\.\d{4}  [\d,]+ images/s  ETA [\d.]+ (us|ms|s|min)$")
    for k, line in enumerate(lines):
        m = pattern.match(line)
        assert m and (int(m.group(1)), int(m.group(2))) == (k // 10 + 1, k % 10 + 1), line
    assert lines[-1].endswith("ETA 0 s")
    # and with the default interval, a short run prints none
    monkeypatch.setattr(statusmod, "STATUS_SECONDS", 10.0)
    trainmod.train(dnnc.load(LENET300), str(small), epochs=1, batch=32, out=str(tmp_path / "s.npz"), log=quiet)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- times

@pytest.mark.parametrize("seconds,text", [(12.4658242, "12.5 s"), (0.0012345, "1.23 ms"), (0.000456, "456 us"),
                                          (3.2, "3.2 s"), (150, "2.5 min"), (5400, "1.5 h"), (0.99996, "1 s"),
                                          (0, "0 s")])
def test_human_seconds(seconds, text):
    assert human_seconds(seconds) == text


def test_bench_prints_human_units():
    report = Report(12.4658242, [KernelTime("c1.conv", 12.4658242, 10**9), KernelTime("f3.dense", 4.2e-5, 10**5)],
                    64, 2.5, False, 1)
    text = render(report)
    assert "12465824" not in text and " us" in text
    assert re.search(r"^c1\.conv +12\.5 s ", text, re.M) and re.search(r"^f3\.dense +42 us ", text, re.M), text
    assert "whole step: 12.5 s (median)" in text and "compile: 2.5 s" in text
