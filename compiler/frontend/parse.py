"""Source text -> syntax tree (nncc.syntax), with a Loc on every node.

The grammar lives in grammar/nn.lark; lark's LALR parser and a Transformer
build the tree.  Parse failures become located NNErrors in plain words.
"""
from __future__ import annotations

import re

import math
from functools import lru_cache
from importlib import resources

import lark
from lark import Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import syntax as S
from ..errors import Loc, NNError, did_you_mean, show_char, source_lines

# A newline next to these is a line continuation, not the end of a statement.
_CONTINUE_AFTER = {",", "|>", "+", "-", "*", "/", "^", "=", ":", "(", "[", "<", ">", "<=", ">=", "==", "!="}
_CONTINUE_BEFORE = {"|>", "for", "+", "-", "*", "/", "^", ")", "]", ","}


class _LineJoiner(lark.lark.PostLex):
    """Drops newline tokens that do not end a statement."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        prev = None
        pending = None  # a newline waiting to see the next token
        for tok in stream:
            if tok.type == "_NL":
                if depth == 0 and prev is not None and prev.value not in _CONTINUE_AFTER:
                    pending = pending or tok
                continue
            if pending is not None:
                if tok.value not in _CONTINUE_BEFORE:
                    yield pending
                pending = None
            if tok.value in ("(", "["):
                depth += 1
            elif tok.value in (")", "]"):
                depth = max(depth - 1, 0)
            prev = tok
            yield tok
        if pending is not None:
            yield pending


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    grammar = resources.files("nncc.grammar").joinpath("nn.lark").read_text(encoding="utf-8")
    return lark.Lark(grammar, parser="lalr", lexer="basic", postlex=_LineJoiner(), propagate_positions=True,
                     maybe_placeholders=True)


class _Builder(Transformer):
    """Lark tree -> nncc.syntax nodes."""

    def __init__(self, file: str, lines: list[str]):
        super().__init__()
        self.file = file
        self.lines = lines

    def loc(self, line: int, col: int) -> Loc:
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return Loc(self.file, line, col, text)

    def tok(self, t: Token) -> Loc:
        return self.loc(t.line, t.column)

    # ---- expressions
    def number(self, items):
        (t,) = items
        v = float(t)
        if not math.isfinite(v):  # 1e309, or an integer of more than 308 digits
            raise NNError("this number is too large for a float (the largest is about 1.8e308)", self.tok(t))
        return S.Num(int(v) if v.is_integer() and "." not in t and "e" not in t.lower() else v, self.tok(t))

    @v_args(meta=True)
    def true(self, meta, items):
        return S.Bool(True, self.loc(meta.line, meta.column))

    @v_args(meta=True)
    def false(self, meta, items):
        return S.Bool(False, self.loc(meta.line, meta.column))

    def string(self, items):
        (t,) = items
        return S.Str(t[1:-1], self.tok(t))

    def name(self, items):
        (t,) = items
        return S.Name(str(t), self.tok(t))

    def index(self, items):
        t, *subs = items
        return S.Index(str(t), tuple(subs), self.tok(t))

    def keyword_arg(self, items):
        t, value = items
        return S.Keyword(str(t), value, self.tok(t))

    def arg(self, items):
        return items[0]

    def _call(self, t, args, body):
        args = [a for a in args if a is not None]
        positional = tuple(a for a in args if not isinstance(a, S.Keyword))
        keywords = tuple(a for a in args if isinstance(a, S.Keyword))
        if body is None:
            return S.Call(str(t), positional, keywords, None, self.tok(t))
        # `sum(i, j: body)`: every argument before the colon must be a bare index name
        for a in args:
            if not isinstance(a, S.Name):
                where = a.loc
                raise NNError(f"'{t}(...: ...)' takes index names before the ':'", where,
                              "write e.g. sum(i, j: w[i, j] * x[j])")
        return S.Call(str(t), (body,), (), tuple(a.id for a in args), self.tok(t))

    def call(self, items):
        t, *rest = items
        body = rest[-1]
        return self._call(t, rest[:-1], body)

    def stage_name(self, items):
        (t,) = items
        return S.Call(str(t), (), (), None, self.tok(t))

    def stage_call(self, items):
        t, *args = items
        return self._call(t, args, None)

    def pipe(self, items):
        # a chain is one flat node of the tree, folded here without recursion: a network
        # hundreds of layers deep is one long pipe
        lhs = items[0]
        for stage in items[1:]:
            lhs = S.Call(stage.name, (lhs,) + stage.args, stage.keywords, None, stage.loc)
        return lhs

    def binary(self, items):
        left, op, right = items
        return S.Binary(str(op), left, right, self.tok(op))

    def power(self, items):
        left, right = items
        return S.Binary("^", left, right, left.loc)

    def neg(self, items):
        op, operand = items
        return S.Neg(operand, self.tok(op))

    def compare(self, items):
        left, op, right = items
        return S.Compare(str(op), left, right, self.tok(op))

    # ---- statements
    def shape(self, items):
        return tuple(i for i in items if i is not None)

    def index_names(self, items):
        return tuple(str(t) for t in items)

    def out_subscripts(self, items):
        return tuple(items)

    def network(self, items):
        (t,) = items
        return S.Network(str(t), self.tok(t))

    def input_decl(self, items):
        t, shape = items
        return S.Decl("input", str(t), shape, self.tok(t))

    def target_decl(self, items):
        t, kind, shape = items
        if kind is not None and str(kind) != "class":
            raise NNError(f"unknown kind of target '{kind}'" + did_you_mean(str(kind), ["class"]), self.tok(kind),
                          f"target {t}: [10] for values, or target {t}: class[10] for class indices")
        if kind is not None and len(shape) != 1:
            raise NNError("class[k] takes one number: how many classes there are", self.tok(kind),
                          f"target {t}: class[10]")
        return S.Decl("target", str(t), shape, self.tok(t), kind is not None)

    def output_decl(self, items):
        (t,) = items
        return S.Output(str(t), self.tok(t))

    def assign(self, items):
        t, reduce, expr = items
        return S.Assign(str(t), str(reduce) if reduce is not None else None, expr, self.tok(t))

    def fn_param(self, items):
        t, indices, default = items
        return S.FnParam(str(t), indices, default, self.tok(t))

    def fn_def(self, items):
        t, *params, body = items
        return S.FnDef(str(t), tuple(p for p in params if p is not None), body, self.tok(t))

    def tensor_param(self, items):
        t, shape = items
        return S.TensorParam(str(t), shape, self.tok(t))

    def option_param(self, items):
        t, default = items
        return S.OptionParam(str(t), default, self.tok(t))

    def param_decl(self, items):
        t, shape, _init_keyword, init = items
        return S.ParamDecl(str(t), shape, init, self.tok(t))

    def extent(self, items):
        t, op, bound = items
        if op != "<":
            raise NNError(f"an extent is written '{t} < size', not with '{op}'", self.tok(op))
        return S.Extent(str(t), bound, self.tok(t))

    def equation(self, items):
        t, indices, body, *extents = items
        return S.Equation(str(t), indices or (), body, tuple(e for e in extents if e is not None),
                          self.tok(t))

    def layer_def(self, items):
        t, *rest = items
        params = tuple(p for p in rest if isinstance(p, (S.TensorParam, S.OptionParam)))
        decls = tuple(p for p in rest if isinstance(p, S.ParamDecl))
        eqs = [p for p in rest if isinstance(p, S.Equation)]
        loc = self.tok(t)
        if len(eqs) != 1:
            raise NNError(f"layer '{t}' needs exactly one output equation such as 'y[i] = ...'; "
                          f"it has {len(eqs)}", eqs[1].loc if len(eqs) > 1 else loc)
        return S.LayerDef(str(t), params, decls, eqs[0], loc)

    def block_decl(self, items):
        word, t = items
        if str(word) != "state":
            raise NNError(f"unknown declaration '{word}' in an optimizer" + did_you_mean(str(word), ["state"]),
                          self.tok(word), "declare what the optimizer keeps between steps as 'state m'")
        return S.StateDecl(str(t), self.tok(t))

    def block_assign(self, items):
        t, expr = items
        return S.Update(str(t), expr, self.tok(t))

    def block(self, items):
        return tuple(i for i in items if i is not None)

    def directive(self, items):
        word, t, *rest = items
        block = rest.pop() if rest and isinstance(rest[-1], tuple) else None
        args = [a for a in rest if a is not None]
        loc = self.tok(t)
        if str(word) == "freeze":
            if args or block is not None:
                raise NNError("'freeze' names one layer: freeze dense_1", loc)
            return S.Freeze(str(t), loc)
        if str(word) != "optimizer":
            raise NNError(f"unknown statement '{word}'" + did_you_mean(str(word), ["optimizer", "network", "freeze"]),
                          self.tok(word))
        if block is None:
            return S.OptimizerUse(str(t), tuple(a for a in args if not isinstance(a, S.Keyword)),
                                  tuple(a for a in args if isinstance(a, S.Keyword)), loc)
        options = []
        for a in args:
            if isinstance(a, S.Keyword):
                options.append(S.OptionParam(a.name, a.value, a.loc))
            elif isinstance(a, S.Name):
                options.append(S.OptionParam(a.id, None, a.loc))
            else:
                raise NNError("an optimizer's options are names, with a default where one helps "
                              "(lr = 0.01)", a.loc)
        return S.OptimizerDef(str(t), tuple(options), tuple(b for b in block if isinstance(b, S.StateDecl)),
                              tuple(b for b in block if isinstance(b, S.Update)), loc)

    def start(self, items):
        return [i for i in items if i is not None]


_TOKEN_WORDS = {
    "_NL": "end of line", "NAME": "a name", "NUMBER": "a number", "STRING": "a string",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "PLUS": "'+'", "MINUS": "'-'",
    "MUL_OP": "'*' or '/'", "COMPARE": "a comparison", "$END": "end of file",
}


def _describe(tok) -> str:
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "$END":
        return "end of file"
    return f"'{tok.value}'"


def _expected(names) -> str:
    words = sorted({_TOKEN_WORDS.get(n, f"'{n.lower()}'" if n.isalpha() else n) for n in names
                    if not n.startswith("__ANON")})
    if not words:
        return ""
    if len(words) > 6:
        return ""
    return "; expected " + (", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0])


def _unclosed_bracket(lines: list[str], before_line: int):
    """(line, col, char) of a bracket opened before `before_line` and not closed by then."""
    stack = []
    for n, text in enumerate(lines[:before_line - 1], start=1):
        in_string = False
        for c, ch in enumerate(text, start=1):
            if ch == '"':
                in_string = not in_string
            elif in_string:
                continue
            elif ch == "#":
                break
            elif ch in "([":
                stack.append((n, c, ch))
            elif ch in ")]" and stack:
                stack.pop()
    return stack[0] if stack else None


# Deeper nesting than this (a thousand pipes in one line, a formula of thousands of
# unary minuses) is refused where it starts, before any recursive pass can overflow
# Python's stack; real programs nest a few tens of levels at most.
MAX_DEPTH = 200


_TRAILING_CR = re.compile(r"\r(?=[\t \r]*(#[^\n]*)?(\n|$))")


def without_bom(source: str) -> str:
    """The source without the byte order mark some editors put at the start of a UTF-8 file."""
    return source[1:] if source.startswith("\ufeff") else source


def _check_depth(tree, builder) -> None:
    """A located error where the syntax tree nests deeper than MAX_DEPTH (an iterative
    walk), at the first place in the source that is too deep."""
    stack = [(tree, 0)]
    deepest = None
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, lark.Tree):
            continue
        if depth > MAX_DEPTH:
            at = _first_position(node)
            deepest = at if deepest is None else min(deepest, at)
            continue
        stack.extend((child, depth + 1) for child in node.children)
    if deepest is not None:
        raise NNError(f"this is nested too deeply (more than {MAX_DEPTH} levels of operators, calls or "
                      f"pipes)", builder.loc(*deepest), "split it into several statements, naming the parts")


def _first_position(node):
    while isinstance(node, lark.Tree):
        meta = node.meta
        if not meta.empty:
            return meta.line, meta.column
        node = next((c for c in node.children if c is not None), None)
    if isinstance(node, Token) and node.line is not None:
        return node.line, node.column
    return 1, 1


def parse(source: str, file: str = "<string>") -> list:
    """Parse .nn source into a list of syntax.* statements, or raise NNError."""
    source = without_bom(source)
    lines = source_lines(source)
    builder = _Builder(file, lines)
    try:
        # a carriage return with only blanks after it on its line ends the line, however the
        # blanks and the \r\n came to be mixed; one character for one, so columns hold
        tree = _parser().parse(_TRAILING_CR.sub(" ", source) + "\n")
        _check_depth(tree, builder)
        try:
            return builder.transform(tree)
        except RecursionError:
            line, col = _first_position(tree)
            raise NNError("this program is nested too deeply to compile", builder.loc(line, col)) from None
    except VisitError as exc:
        if isinstance(exc.orig_exc, NNError):
            raise exc.orig_exc from None
        if isinstance(exc.orig_exc, RecursionError):
            raise NNError("this program is nested too deeply to compile", builder.loc(1, 1)) from None
        raise
    except UnexpectedCharacters as exc:
        text = lines[exc.line - 1] if 0 < exc.line <= len(lines) else ""
        ch = text[exc.column - 1] if 0 < exc.column <= len(text) else getattr(exc, "char", "?")
        raise NNError(f"unexpected character {show_char(ch)}", builder.loc(exc.line, exc.column)) from None
    except UnexpectedEOF as exc:
        opened = _unclosed_bracket(lines, len(lines) + 1)
        if opened is not None:
            raise NNError(f"'{opened[2]}' is never closed", builder.loc(opened[0], opened[1])) from None
        last = max(len(lines), 1)
        raise NNError("unexpected end of file" + _expected(exc.expected), builder.loc(last, 1)) from None
    except UnexpectedToken as exc:
        tok = exc.token
        at_end = tok.type == "$END" or tok.line is None
        opened = _unclosed_bracket(lines, len(lines) + 1 if at_end else tok.line)
        if opened is not None:
            line, col, ch = opened
            raise NNError(f"'{ch}' is never closed", builder.loc(line, col),
                          "close it before the end of the statement") from None
        if tok.type == "$END" or tok.line is None:
            line = max(len(lines), 1)
            col = len(lines[line - 1]) + 1 if lines else 1
            raise NNError("unexpected end of file" + _expected(exc.expected), builder.loc(line, col)) from None
        line, col = tok.line, tok.column
        if tok.type == "_NL":  # point at the end of the unfinished line, not the next one
            line = tok.line
            col = len(lines[line - 1]) + 1 if line <= len(lines) else 1
        hint = None
        if tok.type == "_NL" and ("RPAR" in exc.expected or "RSQB" in exc.expected):
            hint = "a bracket is not closed"
        raise NNError(f"unexpected {_describe(tok)}" + _expected(exc.expected),
                      builder.loc(line, col), hint) from None
    except UnexpectedInput as exc:  # pragma: no cover - other lark failures
        raise NNError("cannot parse this", builder.loc(getattr(exc, "line", 1), getattr(exc, "column", 1))) from None
