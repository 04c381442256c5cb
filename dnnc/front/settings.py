"""Training settings: a network's `train { }` block, overridden by arguments, and optimizers
written as in that block (`sgd(lr=0.1, momentum=0.9)`, `adam`)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from ..base.errors import DnncError, did_you_mean
from ..base.fileio import beside_source, no_such_file
from .parse import Arg, CallValue, NameRef
from ..te.optim import Optimizer


LR_DECAYS = ("constant", "step", "cosine")  # learning-rate decay; loop schedules are schedule { }


@dataclass(frozen=True)
class Settings:
    optimizer: Optimizer = Optimizer("sgd", 0.01, 0.9)
    lr_decay: str = "constant"
    step_size: int = 0
    gamma: float = 0.1
    batch: int = 64
    epochs: int = 10


def settings_from(net: Network, **overrides) -> Settings:
    """The train { } block of the network, then the given overrides (None means not given)."""
    s = Settings()
    opt = s.optimizer
    for name, (value, loc) in net.graph.train.items():
        if name == "optimizer":
            opt = _optimizer(value, loc)
        elif name == "lr_decay":
            if isinstance(value, NameRef):
                s = replace(s, lr_decay=_lr_decay_name(value.name, loc))
            elif isinstance(value, CallValue):
                kw = keyword_args(value, {"size": int, "gamma": float})
                s = replace(s, lr_decay=_lr_decay_name(value.name, loc), step_size=kw.get("size", 0),
                            gamma=kw.get("gamma", 0.1))
            else:
                raise DnncError(f"lr_decay is one of {', '.join(LR_DECAYS)}", loc)
        elif name == "schedule":  # the old name of lr_decay
            raise DnncError(f"the learning-rate schedule is now 'lr_decay = {_written(value)}' "
                            "(the name 'schedule' is for loop schedules)", loc)
        elif name in ("batch", "epochs"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DnncError(f"{name} must be a whole number of at least 1, got {value!r}", loc)
            s = replace(s, **{name: value})
        elif name == "lr":
            opt = replace(opt, lr=_number(value, "lr", loc))
        elif name == "data":
            data_path(net)
        else:
            known = ("optimizer", "lr_decay", "batch", "epochs", "lr", "data")
            raise DnncError(f"unknown training setting '{name}'{did_you_mean(name, known)} "
                            f"(settings: {', '.join(known)})", loc)
    if overrides.get("optimizer"):
        kind = overrides["optimizer"]
        if kind != opt.kind:
            opt = Optimizer(kind, opt.lr if kind == "sgd" else 0.001, 0.9 if kind == "sgd" else 0.0)
    if overrides.get("lr") is not None:
        opt = replace(opt, lr=overrides["lr"])
    s = replace(s, optimizer=opt)
    for k in ("batch", "epochs"):
        if overrides.get(k) is not None:
            s = replace(s, **{k: overrides[k]})
    return s


def data_path(net: Network, given: str | None = None) -> str | None:
    """The data to train and evaluate on: as given (--data), else the train block's
    `data = "DIR_OR.npz"` (beside the .net file), else None for the embedded digits."""
    if given is not None:
        return given
    if "data" not in net.graph.train:
        return None
    value, loc = net.graph.train["data"]
    if not isinstance(value, str):
        raise DnncError('data is a file or directory name in quotes: data = "digits/"', loc)
    path = beside_source(value, loc)
    if not path.exists():
        raise DnncError(f"data '{value}': {no_such_file(path, 'no such file or directory').message}", loc)
    return str(path)


def _lr_decay_name(name, loc):
    if name not in LR_DECAYS:
        raise DnncError(f"unknown lr_decay '{name}'{did_you_mean(name, LR_DECAYS)} (values: {', '.join(LR_DECAYS)})",
                        loc)
    return name


def _written(value) -> str:
    """A setting's value as written: cosine, step(size=5, gamma=0.1)."""
    if isinstance(value, NameRef):
        return value.name
    if isinstance(value, CallValue):
        args = (_written(a.value) if a.key is None else f"{a.key}={_written(a.value)}" for a in value.args)
        return f"{value.name}({', '.join(args)})"
    if isinstance(value, list):
        return f"[{', '.join(_written(v) for v in value)}]"
    return f'"{value}"' if isinstance(value, str) else str(value)


def _number(v, what, loc) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise DnncError(f"{what} must be a non-negative number, got {v!r}", loc)
    return float(v)


AXIS = "axis"  # a keyword argument whose value is a name (a loop axis), not a number


def keyword_args(call: CallValue, allowed: dict, takes: str | None = None) -> dict:
    """The keyword arguments of a call in a `train { }` or `schedule { }` block, each checked
    against its kind: int (a whole number of at least 1), float, bool or AXIS (a name).
    `takes` describes the arguments in the error for one that is not allowed."""
    out = {}
    for a in call.args:
        if a.key is None or a.key not in allowed:
            got = f"; got {a.key or 'a positional argument'}" if takes else ""
            raise DnncError(f"{call.name}(...) takes {takes or ', '.join(k + '=' for k in allowed)}{got}", a.loc)
        kind = allowed[a.key]
        if kind is AXIS:
            if not isinstance(a.value, NameRef):
                raise DnncError(f"{a.key} must name an axis", a.loc)
            out[a.key] = a.value.name
        elif kind is bool:
            out[a.key] = bool(a.value)
        elif kind is int:
            if not isinstance(a.value, int) or isinstance(a.value, bool) or a.value < 1:
                raise DnncError(f"{a.key} must be a whole number of at least 1", a.loc)
            out[a.key] = a.value
        else:
            out[a.key] = _number(a.value, a.key, a.loc)
    return out


def _optimizer(value, loc) -> Optimizer:
    name = value.name if isinstance(value, (NameRef, CallValue)) else None
    if name == "sgd":
        kw = keyword_args(value, {"lr": float, "momentum": float, "nesterov": bool, "weight_decay": float}) \
            if isinstance(value, CallValue) else {}
        return Optimizer("sgd", kw.get("lr", 0.01), kw.get("momentum", 0.0), kw.get("nesterov", False),
                         kw.get("weight_decay", 0.0))
    if name == "adam":
        adam = {"lr": float, "beta1": float, "beta2": float, "eps": float, "weight_decay": float}
        kw = keyword_args(value, adam) if isinstance(value, CallValue) else {}
        return Optimizer("adam", kw.get("lr", 0.001), 0.0, False, kw.get("weight_decay", 0.0),
                         kw.get("beta1", 0.9), kw.get("beta2", 0.999), kw.get("eps", 1e-8))
    raise DnncError("optimizer is sgd(lr=..., momentum=..., nesterov=..., weight_decay=...) or "
                    "adam(lr=..., beta1=..., beta2=..., eps=..., weight_decay=...)", loc)


def optimizer_spec(spec) -> Optimizer:
    """An optimizer from its written form, as in a train { } block: `"sgd(lr=0.1, momentum=0.9)"`,
    `"adam"`; an Optimizer is returned as it is."""
    if isinstance(spec, Optimizer):
        return spec
    if not isinstance(spec, str):
        raise DnncError(f"an optimizer is a string such as 'sgd(lr=0.1, momentum=0.9)' or 'adam', or a "
                        f"dnnc.te.optim.Optimizer; got {type(spec).__name__}")
    m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*", spec)
    if m is None:
        raise DnncError(f"optimizer '{spec}': expected sgd(...) or adam(...), as in a train {{ }} block")
    if m.group(1) not in ("sgd", "adam"):
        raise DnncError(f"optimizer '{spec}': unknown optimizer '{m.group(1)}'"
                        f"{did_you_mean(m.group(1), ('sgd', 'adam'))} (optimizers: sgd, adam)")
    args = []
    for part in (m.group(2).split(",") if m.group(2) and m.group(2).strip() else []):
        key, eq, text = part.partition("=")
        value = _literal(text.strip()) if eq else None
        if not re.fullmatch(r"\s*[A-Za-z_]\w*\s*", key) or value is None:
            raise DnncError(f"optimizer '{spec}': expected NAME=NUMBER, got '{part.strip()}'")
        args.append(Arg(key.strip(), value, None))
    value = CallValue(m.group(1), tuple(args), None) if m.group(2) is not None else NameRef(m.group(1), None)
    try:
        return _optimizer(value, None)
    except DnncError as e:  # the same checks as a train { } block; said of the string
        raise DnncError(f"optimizer '{spec}': {e.message}") from None


def _literal(text: str) -> int | float | None:
    """A finite number as written in a .net file (1, 0.9, 1e-4), else None."""
    for kind in (int, float):
        try:
            v = kind(text)
        except ValueError:
            continue
        return v if math.isfinite(v) else None
    return None
