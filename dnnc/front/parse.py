"""The front end: .net source text -> syntax dataclasses, with every node located.

The grammar is grammar/net.lark (Lark, LALR). Syntax errors become DnncError with
FILE:LINE:COL. Nothing here knows about shapes; graph.py checks meaning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import re
from functools import lru_cache
from pathlib import Path

import lark

from ..base.errors import DnncError, Loc
from ..te.expr import Binary, Const, Expr, Load, Unary, Var


# ----------------------------------------------------------------------------- syntax

@dataclass(frozen=True)
class Call(Expr):
    """f(args) or a reduction f(axes) body, before name resolution."""

    fn: str
    args: tuple[Expr, ...]
    body: Expr | None
    loc: Loc | None = field(default=None, compare=False, repr=False)

    def children(self):
        return self.args + ((self.body,) if self.body is not None else ())


ELLIPSIS = "..."


@dataclass(frozen=True)
class TensorDecl:
    name: str
    dims: tuple  # Expr or ELLIPSIS
    loc: Loc


@dataclass(frozen=True)
class AttrDecl:
    name: str
    default: Expr | None
    loc: Loc


@dataclass(frozen=True)
class ParamDecl:
    name: str
    dims: tuple
    init: tuple  # ("named", "he_normal"), ("named", "uniform", bound expr) or ("const", 0.0)
    loc: Loc


@dataclass(frozen=True)
class Assign:
    name: str
    index: tuple
    value: Expr
    loc: Loc


@dataclass(frozen=True)
class OpDef:
    name: str
    inputs: tuple[TensorDecl, ...]
    attrs: tuple[AttrDecl, ...]
    output: TensorDecl
    params: tuple[ParamDecl, ...]
    body: tuple[Assign, ...]
    requires: tuple[Expr, ...]
    loc: Loc
    states: tuple[ParamDecl, ...] = ()
    updates: tuple[Assign, ...] = ()


@dataclass(frozen=True)
class NameRef:
    name: str
    loc: Loc


@dataclass(frozen=True)
class CallValue:
    name: str
    args: tuple["Arg", ...]
    loc: Loc


@dataclass(frozen=True)
class Arg:
    key: str | None
    value: object  # int, float, str, list, NameRef or CallValue
    loc: Loc


@dataclass(frozen=True)
class Stage:
    op: str
    args: tuple[Arg, ...]
    called: bool  # written with parentheses
    loc: Loc


@dataclass(frozen=True)
class Binding:
    name: str
    stages: tuple[Stage, ...]
    loc: Loc


@dataclass(frozen=True)
class Setting:
    name: str
    value: object
    loc: Loc


@dataclass(frozen=True)
class Network:
    name: str
    inputs: tuple[tuple[str, tuple[int, ...], Loc], ...]
    labels: tuple[tuple[str, int | tuple[int, ...], Loc], ...]  # classes, or a target shape
    bindings: tuple[Binding, ...]
    outputs: tuple[tuple[str, Loc], ...]
    loss: tuple[Stage, ...] | None
    train: tuple[Setting, ...]
    schedule: tuple[Setting, ...]
    loc: Loc


@dataclass(frozen=True)
class Module:
    file: str
    ops: tuple[OpDef, ...]
    networks: tuple[Network, ...]


# ----------------------------------------------------------------------------- parsing

def grammar_text() -> str:
    here = Path(__file__).resolve().parent
    for p in (here.parent.parent / "grammar" / "net.lark", here.parent / "grammar" / "net.lark"):
        if p.exists():
            return p.read_text()
    from importlib.resources import files

    return files("dnnc.grammar").joinpath("net.lark").read_text()


@lru_cache(maxsize=1)
def parser() -> lark.Lark:
    return lark.Lark(grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True)


_TOKEN_TEXT = {
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'",
    "COMMA": "','", "SEMICOLON": "';'", "COLON": "':'", "EQUAL": "'='", "NAME": "a name",
    "NUMBER": "a number", "INT": "an integer", "STRING": "a string",
    "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "PERCENT": "'%'",
    "CMP": "a comparison", "ELLIPSIS": "'...'", "TILDE": "'~'", "$END": "end of file",
}


def _token_text(name: str) -> str:
    if name in _TOKEN_TEXT:
        return _TOKEN_TEXT[name]
    if name.startswith("__ANON"):  # an unnamed literal such as '->' or '|>'
        for t in parser().terminals:
            if t.name == name:
                return repr(t.pattern.value)
    return repr(name.lower()) if name.isupper() else name


def _expected(names) -> str:
    # closing brackets first: at the end of a file they are what is missing
    words = sorted({_token_text(n) for n in names}, key=lambda w: (w not in ("')'", "']'", "'}'"), w))
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


_STMT_START = re.compile(r"\s*(param\b|state\b|update\b|require\b|\}|[A-Za-z_][\w.]*\s*\[[^\]\n]*\]\s*=(?!=))")


def terminate_statements(text: str) -> str:
    """Mark the end of each statement inside braces with ';'.

    A statement ends at a line break (outside parentheses and brackets) when the next line
    starts a new statement: `param`, `state`, `update`, `require`, `}` or `name[...] =`. Any other line break
    continues the statement, so long index expressions can span lines. The ';' goes at the
    end of the line, so no column moves.
    """
    out, depth, braces = [], 0, 0
    lines = text.split("\n")
    for n, line in enumerate(lines):
        code = line.split("#", 1)[0]
        for ch in code:
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth = max(depth - 1, 0)
            elif ch == "{":
                braces += 1
            elif ch == "}":
                braces = max(braces - 1, 0)
        nxt = lines[n + 1] if n + 1 < len(lines) else ""
        if braces and depth == 0 and code.strip() and _STMT_START.match(nxt):
            line = code + ";" + line[len(code):]
        out.append(line)
    return "\n".join(out)


def parse(text: str, file: str = "<string>") -> Module:
    """Parse .net source into a Module; raise DnncError located at the first syntax error."""
    lines = text.splitlines()

    def loc_at(line: int, col: int) -> Loc:
        src = lines[line - 1] if 0 < line <= len(lines) else ""
        return Loc(file, line, col, src)

    try:
        tree = parser().parse(terminate_statements(text))
    except lark.UnexpectedCharacters as e:
        # e.pos_in_stream counts the ';' that terminate_statements inserts; the column does not
        ch = lines[e.line - 1][e.column - 1:e.column] if 0 < e.line <= len(lines) else ""
        raise DnncError(f"unexpected character {ch!r}", loc_at(e.line, e.column)) from None
    except lark.UnexpectedEOF as e:
        line = max(len(lines), 1)
        raise DnncError(f"unexpected end of file; expected {_expected(e.expected)}",
                        loc_at(line, len(lines[-1]) + 1 if lines else 1)) from None
    except lark.UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            line = max(len(lines), 1)
            raise DnncError(f"unexpected end of file; expected {_expected(e.expected)}",
                            loc_at(line, len(lines[-1]) + 1 if lines else 1)) from None
        src = lines[tok.line - 1] if 0 < tok.line <= len(lines) else ""
        what = "end of line" if tok.type == "SEMICOLON" and src[tok.column - 1:tok.column] != ";" else repr(tok.value)
        raise DnncError(f"unexpected {what}; expected {_expected(e.expected)}",
                        loc_at(tok.line, tok.column)) from None
    _check_depth(tree, loc_at)
    return _Builder(file, loc_at).module(tree)


MAX_DEPTH = 200  # syntax-tree levels: far beyond any real network, well within Python's recursion


def _check_depth(tree, loc_at) -> None:
    """Refuse absurdly nested source (f(f(f(...))) thousands deep) before any recursive walk."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            meta = node.meta if not getattr(node.meta, "empty", True) else None
            where = loc_at(meta.line, meta.column) if meta else None
            raise DnncError(f"nested more than {MAX_DEPTH} levels deep; split the expression or the pipeline", where)
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, lark.Tree))


class _Builder:
    """Walks the Lark tree into the syntax dataclasses above."""

    def __init__(self, file: str, loc_at):
        self.file = file
        self.loc_at = loc_at

    def loc(self, node) -> Loc:
        if isinstance(node, lark.Token):
            return self.loc_at(node.line, node.column)
        return self.loc_at(node.meta.line, node.meta.column)

    def module(self, tree) -> Module:
        ops, nets = [], []
        for item in tree.children:
            if item.data == "op_def":
                ops.append(self.op_def(item))
            else:
                nets.append(self.network(item))
        return Module(self.file, tuple(ops), tuple(nets))

    # ---- ops
    def op_def(self, t) -> OpDef:
        name, tlist, alist, out, *stmts = t.children
        inputs = tuple(self.tensor_decl(c) for c in tlist.children)
        attrs = tuple(self.attr_decl(c) for c in alist.children) if alist is not None else ()
        params, body, requires, states, updates = [], [], [], [], []
        for s in stmts:
            if not isinstance(s, lark.Tree):
                continue
            if s.data == "param_decl":
                params.append(self.param_decl(s))
            elif s.data == "state_decl":
                states.append(self.param_decl(s))
            elif s.data == "require":
                requires.append(self.expr(s.children[0]))
            elif s.data == "update":
                updates.append(self.assign(s))
            else:
                body.append(self.assign(s))
        return OpDef(str(name), inputs, attrs, self.tensor_decl(out), tuple(params), tuple(body),
                     tuple(requires), self.loc(name), tuple(states), tuple(updates))

    def dims(self, dl) -> tuple:
        return () if dl is None else tuple(self.expr(d) for d in dl.children)

    def tensor_decl(self, t) -> TensorDecl:
        return TensorDecl(str(t.children[0]), self.dims(t.children[1]), self.loc(t.children[0]))

    def attr_decl(self, t) -> AttrDecl:
        name, default = t.children
        return AttrDecl(str(name), None if default is None else self.expr(default), self.loc(name))

    def param_decl(self, t) -> ParamDecl:
        name, dl, init = t.children
        if init is None:
            spec = ("const", 0.0)
        elif init.data == "init_named":
            fn, arg = init.children
            spec = ("named", str(fn)) if arg is None else ("named", str(fn), self.expr(arg))
        else:
            spec = ("const", float(self.literal(init.children[0])))
        return ParamDecl(str(name), self.dims(dl), spec, self.loc(name))

    def assign(self, t) -> Assign:
        name, dl, value = t.children
        return Assign(str(name), self.dims(dl), self.expr(value), self.loc(name))

    _BIN = {"add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%", "and_": "and", "or_": "or"}

    def expr(self, t):
        if isinstance(t, lark.Token):
            raise AssertionError(t)
        kind = t.data
        loc = self.loc(t)
        if kind == "ellipsis":
            return ELLIPSIS
        if kind == "number":
            return Const(_number(str(t.children[0])), loc)
        if kind == "name":
            return Var(str(t.children[0]), loc)
        if kind == "access":
            return Load(str(t.children[0]), self.dims(t.children[1]), loc)
        if kind == "apply":
            fn, *rest = t.children
            body = rest[-1]
            args = tuple(self.expr(a) for a in rest[:-1] if a is not None)
            return Call(str(fn), args, None if body is None else self.expr(body), self.loc(fn))
        if kind == "neg":
            return Unary("neg", self.expr(t.children[0]), loc)
        if kind == "compare":
            a, op, b = t.children
            return Binary(str(op), self.expr(a), self.expr(b), self.loc(op))
        if kind in self._BIN:
            return Binary(self._BIN[kind], self.expr(t.children[0]), self.expr(t.children[1]), loc)
        raise AssertionError(kind)

    # ---- networks
    def network(self, t) -> Network:
        name, *stmts = t.children
        inputs, labels, bindings, outputs, train, schedule = [], [], [], [], [], []
        loss = None
        for s in stmts:
            if not isinstance(s, lark.Tree):
                continue
            k = s.data
            if k == "input_decl":
                n, *dims = s.children
                inputs.append((str(n), tuple(int(d) for d in dims), self.loc(n)))
            elif k == "label_decl":
                n, spec = s.children
                if isinstance(spec, lark.Tree):  # real-valued targets of this shape per example
                    labels.append((str(n), tuple(int(d) for d in spec.children), self.loc(n)))
                else:  # class numbers 0..spec-1
                    labels.append((str(n), int(spec), self.loc(n)))
            elif k == "binding":
                n, pipe = s.children
                bindings.append(Binding(str(n), self.pipeline(pipe), self.loc(n)))
            elif k == "output_stmt":
                outputs.extend((str(n), self.loc(n)) for n in s.children)
            elif k == "loss_stmt":
                if loss is not None:
                    raise DnncError("a network has one loss", self.loc(s))
                loss = self.pipeline(s.children[0])
            elif k == "train_block":
                train.extend(self.setting(c) for c in s.children if isinstance(c, lark.Tree))
            elif k == "schedule_block":
                schedule.extend(self.setting(c) for c in s.children if isinstance(c, lark.Tree))
        return Network(str(name), tuple(inputs), tuple(labels), tuple(bindings), tuple(outputs),
                       loss, tuple(train), tuple(schedule), self.loc(name))

    def pipeline(self, t) -> tuple[Stage, ...]:
        out = []
        for st in t.children:
            name = st.children[0]
            if st.data == "stage_name":
                out.append(Stage(str(name), (), False, self.loc(name)))
            else:
                out.append(Stage(str(name), self.call_args(st.children[1]), True, self.loc(name)))
        return tuple(out)

    def call_args(self, t) -> tuple[Arg, ...]:
        if t is None:
            return ()
        out = []
        for a in t.children:
            if a.data == "kwarg":
                k, v = a.children
                out.append(Arg(str(k), self.value(v), self.loc(k)))
            else:
                out.append(Arg(None, self.value(a.children[0]), self.loc(a)))
        return tuple(out)

    def setting(self, t) -> Setting:
        n, v = t.children
        return Setting(str(n), self.value(v), self.loc(n))

    def value(self, t):
        kind = t.data
        if kind in ("signed_number", "negative_number"):
            return self.literal(t)
        if kind == "string":
            return str(t.children[0])[1:-1]
        if kind == "list_value":
            return [self.value(c) for c in t.children if c is not None]
        if kind == "name_value":
            return NameRef(str(t.children[0]), self.loc(t))
        if kind == "call_value":
            return CallValue(str(t.children[0]), self.call_args(t.children[1]), self.loc(t))
        raise AssertionError(kind)

    def literal(self, t):
        v = _number(str(t.children[0]))
        return -v if t.data == "negative_number" else v


def _number(s: str):
    if any(ch in s for ch in ".eE"):
        return float(s)
    return int(s)
