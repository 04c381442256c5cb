"""Instantiation: an op definition of the front end turned into tensor expressions.

`instantiate` takes an op written in index notation (parse.OpDef), the shapes of its inputs
and the values of its attributes, and produces tensor-expression statements (te.stmt.TStmt)
`T[i, j, ...] = value` over global buffer names, with every name resolved, every extent
known, and every read outside a reduction proven in range. It raises DnncError, located in
the op's source, for anything a user can get wrong.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

from ..base.errors import DnncError, Loc, did_you_mean
from ..te import affine
from ..te.expr import (LOGIC, REDUCE, Binary, Const, Expr, Load, Reduce, Select, Unary, Var,
                       free_vars, is_bool, is_int, show, substitute)
from ..te.bounds import check_bounds
from ..te.stmt import RNG_SEED, UNARY_FUNCS, TStmt, count_flops, simplify_indices
from .parse import ELLIPSIS, Call, OpDef

INITIALIZERS = ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "zeros", "ones")


@dataclass(frozen=True)
class ParamSpec:
    name: str  # the name inside the op, e.g. "weight"
    shape: tuple[int, ...]
    init: tuple
    loc: Loc


@dataclass(frozen=True)
class Instance:
    op: str
    out_shape: tuple[int, ...]
    params: tuple[ParamSpec, ...]
    temps: tuple[tuple[str, tuple[int, ...]], ...]
    stmts: tuple[TStmt, ...]
    flops: int
    states: tuple[ParamSpec, ...] = ()
    updates: tuple[TStmt, ...] = ()  # training only: state updates after the forward pass
    attrs: tuple[tuple[str, object], ...] = ()  # the attribute values, defaults filled in


def without_params(inst: Instance, prefix: str, dropped: set[str]) -> Instance:
    """The instance with the parameters `dropped` (names inside the op) removed: each read of
    one becomes 0, and a sum loses the zero term (`conv(..., bias=false)`)."""
    gone = {f"{prefix}.{n}" for n in dropped}

    def zero(e: Expr):
        if isinstance(e, Load) and e.tensor in gone:
            return Const(0.0)
        if isinstance(e, Binary) and e.op == "+" and Const(0.0) in (e.a, e.b):
            return e.b if e.a == Const(0.0) else e.a
        return None

    def strip(stmts):
        return tuple(replace(s, value=substitute(s.value, zero)) for s in stmts)

    return replace(inst, params=tuple(p for p in inst.params if p.name not in dropped),
                   stmts=strip(inst.stmts), updates=strip(inst.updates))


# ----------------------------------------------------------------------------- evaluation

def evaluate(e: Expr, env: dict, loc: Loc | None = None):
    """Value of a constant expression over attributes and sizes (ints, floats, booleans)."""
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Var):
        if e.name not in env:
            raise DnncError(f"unknown name '{e.name}'", e.loc or loc)
        return env[e.name]
    if isinstance(e, Unary):
        a = evaluate(e.a, env, loc)
        return {"neg": lambda: -a, "abs": lambda: abs(a), "not": lambda: not a,
                "exp": lambda: math.exp(a), "log": lambda: math.log(a),
                "sqrt": lambda: math.sqrt(a)}.get(e.op, lambda: _bad(e, loc))()
    if isinstance(e, Binary):
        a, b = evaluate(e.a, env, loc), evaluate(e.b, env, loc)
        if e.op in ("/", "%") and b == 0:
            raise DnncError(f"division by zero in {show(e)}", e.loc or loc)
        if e.op == "/":
            return a // b if isinstance(a, int) and isinstance(b, int) else a / b
        return _BINOPS[e.op](a, b)
    if isinstance(e, Call) and e.body is None and e.fn in ("exp", "log", "sqrt") and len(e.args) == 1:
        a = evaluate(e.args[0], env, loc)
        try:
            return getattr(math, e.fn)(a)
        except ValueError:
            raise DnncError(f"{e.fn}({a}) is undefined", e.loc or loc) from None
    if isinstance(e, Call) and e.body is None and e.fn in ("max", "min") and len(e.args) == 2:
        vals = [evaluate(x, env, loc) for x in e.args]
        return max(vals) if e.fn == "max" else min(vals)
    return _bad(e, loc)


_BINOPS = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "%": lambda a, b: a % b, "max": max, "min": min,
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
    "and": lambda a, b: a and b, "or": lambda a, b: a or b,
}


def _bad(e, loc):
    raise DnncError(f"'{show(e) if not isinstance(e, Call) else e.fn}' is not a constant expression",
                    getattr(e, "loc", None) or loc)


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# ----------------------------------------------------------------------------- instantiate

def instantiate(op: OpDef, in_shapes: list[tuple[int, ...]], attrs: dict, names: dict[str, str],
                prefix: str, call_loc: Loc, training: bool = False) -> Instance:
    """Instantiate `op` for inputs of `in_shapes` with attribute values `attrs`.

    `names` maps the op's input and output names to global tensor names; parameters and
    temporaries become `prefix.NAME`. Errors about the call are located at `call_loc`.
    """
    try:
        return _instantiate(op, in_shapes, attrs, names, prefix, call_loc, training)
    except DnncError as e:
        # An error inside an op from another file (the prelude, e.g. a division by stride=0)
        # is shown at the user's call: that file is not the user's to read or fix.
        if e.loc is not None and call_loc is not None and e.loc.file != call_loc.file:
            msg = e.message if e.message.startswith(f"{op.name}: ") else f"{op.name}: {e.message}"
            raise DnncError(msg, call_loc) from None
        raise


def _blame_attrs(dims, attrs: dict, where: str, loc: Loc) -> None:
    """A size below 1 that comes from an argument below 1: name the argument."""
    for d in dims:
        for n in sorted(free_vars(d)) if isinstance(d, Expr) else ():
            v = attrs.get(n)
            if isinstance(v, int) and not isinstance(v, bool) and v < 1:
                raise DnncError(f"{where}'{n}' must be at least 1, got {v}", loc)


def _instantiate(op: OpDef, in_shapes: list[tuple[int, ...]], attrs: dict, names: dict[str, str],
                 prefix: str, call_loc: Loc, training: bool = False) -> Instance:
    where = f"{op.name}: "
    env: dict = {}
    ellipsis: list[int] | None = None

    # 1. bind sizes from the input shapes
    for decl, shape in zip(op.inputs, in_shapes):
        fixed = [d for d in decl.dims if d is not ELLIPSIS]
        has_ell = len(fixed) != len(decl.dims)
        if (len(shape) != len(fixed)) if not has_ell else (len(shape) < len(fixed)):
            want = f"{len(fixed)}" + (" or more" if has_ell else "")
            raise DnncError(f"{where}input '{decl.name}' must have rank {want}, "
                            f"got shape {_fmt_shape(shape)}", call_loc)
        k = 0
        for d in decl.dims:
            if d is ELLIPSIS:
                n_ell = len(shape) - len(fixed)
                dims = list(shape[k:k + n_ell])
                if ellipsis is not None and dims != ellipsis:
                    raise DnncError(f"{where}input '{decl.name}' has trailing shape {_fmt_shape(dims)} "
                                    f"but an earlier input has {_fmt_shape(ellipsis)}", call_loc)
                ellipsis = dims
                k += n_ell
                continue
            size = shape[k]
            if isinstance(d, Var) and d.name not in env:
                env[d.name] = size
            else:
                expect = evaluate(d, env, decl.loc)
                if expect != size:
                    raise DnncError(f"{where}dimension {k} of input '{decl.name}' is {size}, "
                                    f"expected {show(d)} = {expect} (shape {_fmt_shape(shape)})", call_loc)
            k += 1
    env["training"] = 1 if training else 0  # ops may behave differently in training (dropout)

    # 2. attributes: given values, then defaults in order
    known = {a.name for a in op.attrs}
    for key in attrs:
        if key not in known:
            raise DnncError(f"{where}unknown argument '{key}'", call_loc)
    for a in op.attrs:
        if a.name in attrs:
            v = attrs[a.name]
            wants_int = a.default is None or isinstance(evaluate(a.default, env, a.loc), int)
            if wants_int and not (isinstance(v, int) and not isinstance(v, bool)):
                raise DnncError(f"{where}argument '{a.name}' must be an integer, got {v!r}", call_loc)
            if not wants_int and not isinstance(v, (int, float)):
                raise DnncError(f"{where}argument '{a.name}' must be a number, got {v!r}", call_loc)
            env[a.name] = v
        elif a.default is not None:
            env[a.name] = evaluate(a.default, env, a.loc)
        else:
            raise DnncError(f"{where}missing argument '{a.name}'", call_loc)

    for req in op.requires:
        if not evaluate(req, env, call_loc):
            vals = ", ".join(f"{n} = {env[n]}" for n in sorted({v.name for v in req.walk() if isinstance(v, Var)})
                             if n in env)
            raise DnncError(f"{where}requires {show(req)}, but {vals}", call_loc)

    # 3. output shape
    out_dims: list[int] = []
    for d in op.output.dims:
        if d is ELLIPSIS:
            if ellipsis is None:
                raise DnncError(f"{where}output uses '...' but no input does", op.output.loc)
            out_dims.extend(ellipsis)
            continue
        v = evaluate(d, env, op.output.loc)
        if not isinstance(v, int):
            raise DnncError(f"{where}output size {show(d)} is not an integer", op.output.loc)
        if v < 1:
            _blame_attrs((d,), attrs, where, call_loc)
            raise DnncError(f"{where}output would have shape "
                            f"{_fmt_shape([evaluate(x, env) if x is not ELLIPSIS else '...' for x in op.output.dims])}"
                            f": the input {_fmt_shape(in_shapes[0])} is too small", call_loc)
        out_dims.append(v)
    out_shape = tuple(out_dims)

    # 4. parameters
    params = []
    for p in op.params:
        shape = tuple(evaluate(d, env, p.loc) for d in p.dims)
        if any(not isinstance(s, int) or s < 1 for s in shape):
            _blame_attrs(p.dims, attrs, where, call_loc)
            raise DnncError(f"{where}parameter '{p.name}' would have shape {_fmt_shape(shape)}", call_loc)
        init = p.init
        if init[0] == "named" and len(init) == 3:  # uniform(bound) or normal(std)
            if init[1] not in ("uniform", "normal"):
                raise DnncError(f"'{init[1]}' takes no argument; uniform(bound) and normal(std) do", p.loc)
            v = evaluate(init[2], env, p.loc)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise DnncError(f"{init[1]}(...) needs a non-negative number, got {v}", p.loc)
            init = ("named", init[1], float(v))
        elif init[0] == "named" and init[1] not in INITIALIZERS:
            raise DnncError(f"unknown initializer '{init[1]}' (known: {', '.join(INITIALIZERS)}, "
                            f"uniform(bound), normal(std))", p.loc)
        params.append(ParamSpec(p.name, shape, init, p.loc))

    states = []
    for p in op.states:
        shape = tuple(evaluate(d, env, p.loc) for d in p.dims)
        if any(not isinstance(s, int) or s < 1 for s in shape):
            _blame_attrs(p.dims, attrs, where, call_loc)
            raise DnncError(f"{where}state '{p.name}' would have shape {_fmt_shape(shape)}", call_loc)
        states.append(ParamSpec(p.name, shape, p.init, p.loc))

    # 5. statements
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for decl, shape in zip(op.inputs, in_shapes):
        tensors[decl.name] = (names[decl.name], tuple(shape))
    for p in params + states:
        tensors[p.name] = (f"{prefix}.{p.name}", p.shape)
    tensors[" rng"] = (RNG_SEED, (1,))  # not a name a user can write
    out_name = op.output.name
    written: set[str] = set()
    temps = []
    stmts = []
    r = _Resolver(op, env, tensors, ellipsis or [])
    r.salt = zlib.crc32(prefix.encode()) & 0xFFFF
    fixed_names = {d.name for d in op.inputs} | {p.name for p in params} | {p.name for p in states}
    for st in op.body:
        if st.name in fixed_names:
            raise DnncError(f"{where}cannot assign to input, parameter or state '{st.name}'"
                            + ("; state changes with `update`" if st.name in {p.name for p in states} else ""),
                            st.loc)
        if st.name in written:
            raise DnncError(f"{where}tensor '{st.name}' is assigned twice", st.loc)
        lhs = r.lhs_vars(st)
        r.lhs_extents = list(zip(lhs, out_shape)) if st.name == out_name and len(lhs) == len(out_shape) else None
        value = r.resolve(st.value, {v: None for v in lhs})
        if is_bool(value):
            raise DnncError(f"{where}the value of '{st.name}' is a condition, not a number; use select(...)", st.loc)
        if st.name == out_name:
            if len(lhs) != len(out_shape):
                raise DnncError(f"{where}'{st.name}' has rank {len(out_shape)} but is indexed with {len(lhs)} indices", st.loc)
            extents = list(out_shape)
            gname = names[out_name]
        else:
            extents = [r.infer_extent(v, value, st.loc) for v in lhs]
            gname = f"{prefix}.{st.name}"
            temps.append((gname, tuple(extents)))
        tensors[st.name] = (gname, tuple(extents))
        written.add(st.name)
        stmt = simplify_indices(TStmt(gname, tuple(zip(lhs, extents)), value, st.loc))
        check_bounds(stmt, {n: s for n, s in tensors.values()})
        stmts.append(stmt)
    if out_name not in written:
        raise DnncError(f"{where}the output '{out_name}' is never assigned", op.output.loc)
    updates = []
    for st in op.updates:
        if st.name not in {p.name for p in states}:
            raise DnncError(f"{where}`update` changes a state tensor; '{st.name}' is not one", st.loc)
        lhs = r.lhs_vars(st)
        shape = tensors[st.name][1]
        if len(lhs) != len(shape):
            raise DnncError(f"{where}'{st.name}' has rank {len(shape)} but is indexed with {len(lhs)} indices", st.loc)
        r.lhs_extents = None
        value = r.resolve(st.value, {v: None for v in lhs})
        stmt = simplify_indices(TStmt(tensors[st.name][0], tuple(zip(lhs, shape)), value, st.loc))
        check_bounds(stmt, {n: s for n, s in tensors.values()})
        if training:
            updates.append(stmt)
    return Instance(op.name, out_shape, tuple(params), tuple(temps), tuple(stmts),
                    sum(count_flops(s) for s in stmts), tuple(states), tuple(updates),
                    tuple((a.name, env[a.name]) for a in op.attrs if a.name in env))


class _Resolver:
    """Resolves names in an op body: index variables, attributes/sizes, tensors, functions."""

    def __init__(self, op: OpDef, env: dict, tensors: dict, ellipsis: list[int]):
        self.op, self.env, self.tensors = op, env, tensors
        self.ell_vars = [f"_{k}" for k in range(len(ellipsis))]
        self.lhs_extents: list | None = None
        self.salt = 0

    def lhs_vars(self, st) -> list[str]:
        out = []
        for d in st.index:
            if d is ELLIPSIS:
                out.extend(self.ell_vars)
            elif isinstance(d, Var):
                if d.name in out:
                    raise DnncError(f"index '{d.name}' appears twice on the left", d.loc or st.loc)
                out.append(d.name)
            else:
                raise DnncError("the left side is indexed by plain names (the result's indices)",
                                getattr(d, "loc", None) or st.loc)
        return out

    def resolve(self, e, scope: dict) -> Expr:
        loc = getattr(e, "loc", None)
        if isinstance(e, Const):
            return e
        if isinstance(e, Var):
            if e.name in scope:
                return e
            if e.name in self.env:
                return Const(self.env[e.name], e.loc)
            if e.name in self.tensors:
                raise DnncError(f"tensor '{e.name}' needs indices: {e.name}[...]", loc)
            raise DnncError(f"unknown name '{e.name}'", loc)
        if isinstance(e, Load):
            if e.tensor not in self.tensors:
                raise DnncError(f"unknown tensor '{e.tensor}'", loc)
            gname, shape = self.tensors[e.tensor]
            index = []
            for d in e.index:
                if d is ELLIPSIS:
                    if not all(v in scope for v in self.ell_vars):
                        raise DnncError("'...' in a read needs '...' on the left side too", loc)
                    index.extend(Var(v) for v in self.ell_vars)
                else:
                    x = self.resolve(d, scope)
                    if not is_int(x):
                        raise DnncError(f"index {show(x)} of '{e.tensor}' is not an integer expression", x.loc or loc)
                    index.append(affine.simplify(x))
            if len(index) != len(shape):
                raise DnncError(f"'{e.tensor}' has rank {len(shape)} {_fmt_shape(shape)} but is read "
                                f"with {len(index)} indices", loc)
            return Load(gname, tuple(index), loc)
        if isinstance(e, Unary):
            return Unary(e.op, self.resolve(e.a, scope), loc)
        if isinstance(e, Binary):
            a, b = self.resolve(e.a, scope), self.resolve(e.b, scope)
            if e.op in LOGIC and not (is_bool(a) and is_bool(b)):
                raise DnncError(f"'{e.op}' joins conditions", loc)
            return Binary(e.op, a, b, loc)
        if isinstance(e, Call):
            return self.call(e, scope)
        raise AssertionError(e)

    def call(self, e: Call, scope: dict) -> Expr:
        loc = e.loc
        if e.body is not None:
            if e.fn not in REDUCE:
                raise DnncError(f"'{e.fn}' is not a reduction (reductions: {', '.join(REDUCE)})", loc)
            axes: list[tuple[str, int | None]] = []
            for a in e.args:
                if isinstance(a, Var):
                    name, bound = a.name, None
                elif isinstance(a, Binary) and a.op == "<" and isinstance(a.a, Var):
                    name, bound = a.a.name, evaluate(a.b, self.env, a.loc)
                    if not isinstance(bound, int) or bound < 1:
                        raise DnncError(f"the range of '{name}' must be a positive integer, got {bound}", a.loc)
                else:
                    raise DnncError("a reduction's axes are names, optionally with a range: sum(i, j < 3) ...",
                                    getattr(a, "loc", None) or loc)
                if name in scope:
                    raise DnncError(f"reduction axis '{name}' is already an index here", getattr(a, "loc", None) or loc)
                axes.append((name, bound))
            if not axes:
                raise DnncError(f"{e.fn}(...) needs at least one axis", loc)
            inner = dict(scope)
            inner.update({n: b for n, b in axes})
            body = self.resolve(e.body, inner)
            done = tuple((n, b if b is not None else self.infer_extent(n, body, loc)) for n, b in axes)
            return Reduce(e.fn, done, body, loc)
        if e.fn == "uniform" and not e.args:
            return self.uniform(loc)
        args = [self.resolve(a, scope) for a in e.args]
        if e.fn == "select" and len(args) == 3 and not any(
                isinstance(x, (Var, Load)) for x in args[0].walk()):
            return args[1] if evaluate(args[0], {}, loc) else args[2]  # a constant condition
        if e.fn in UNARY_FUNCS and len(args) == 1:
            return Unary(e.fn, args[0], loc)
        if e.fn in ("max", "min") and len(args) == 2:
            return Binary(e.fn, args[0], args[1], loc)
        if e.fn == "select" and len(args) == 3:
            if not is_bool(args[0]):
                raise DnncError("select's first argument is a condition, such as i < 3", loc)
            return Select(args[0], args[1], args[2], loc)
        if e.fn in REDUCE and e.fn not in ("max", "min"):
            raise DnncError(f"{e.fn}(...) needs a body: {e.fn}(i) x[i]", loc)
        known = UNARY_FUNCS + ("max", "min", "select", "uniform")
        if e.fn in known:
            raise DnncError(f"wrong number of arguments to '{e.fn}'", loc)
        raise DnncError(f"unknown function '{e.fn}'{did_you_mean(e.fn, known)} (known: {', '.join(known)})", loc)

    def uniform(self, loc) -> Expr:
        """A pseudo-random number in [0, 1) per element of the output and per training step:
        a hash of the step's seed, the element's position and the layer (so the backward
        pass recomputes the same numbers instead of storing them)."""
        if self.lhs_extents is None:
            raise DnncError("uniform() is allowed only in the statement that writes the op's output", loc)
        flat: Expr = Const(0)
        for n, x in self.lhs_extents:
            flat = Binary("+", Binary("*", flat, Const(x)), Var(n))
        flat = affine.simplify(Binary("+", flat, Const(self.salt << 40)))
        return Binary("uniform", Load(RNG_SEED, (Const(0),), loc), flat, loc)

    def infer_extent(self, name: str, body: Expr, loc) -> int:
        """The range of index `name`: the size of a dimension it indexes directly."""
        found: list[tuple[str, int]] = []
        for x in body.walk():
            if isinstance(x, Load):
                shape = self._shape_of(x.tensor)
                for k, ix in enumerate(x.index):
                    if ix == Var(name):
                        found.append((x.tensor, shape[k]))
        if not found:
            raise DnncError(f"cannot tell the range of index '{name}': it indexes no tensor directly; "
                            f"give it one, as in sum({name} < 3)", loc)
        sizes = {s for _, s in found}
        if len(sizes) > 1:
            desc = ", ".join(f"{s} in {t}" for t, s in found)
            raise DnncError(f"index '{name}' ranges over different sizes ({desc}); give its range "
                            f"explicitly, as in sum({name} < {min(sizes)})", loc)
        return found[0][1]

    def _shape_of(self, gname: str):
        for g, s in self.tensors.values():
            if g == gname:
                return s
        raise AssertionError(gname)
