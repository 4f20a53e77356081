"""The syntax tree of a .nn program: plain frozen dataclasses, each with a Loc.

    program    := stmt*
    stmt       := Network | Decl | Output | Assign | FnDef | LayerDef | OptimizerDef | OptimizerUse | Freeze
    expr       := Num | Bool | Str | Name | Index | Call | Binary | Neg | Compare

A pipe `a |> f(b)` is already a `Call('f', [a, b])` here.  A reduction
`sum(i, j: e)` is a `Call` whose `bound` names the summed indices and whose
single argument is the body.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Loc


@dataclass(frozen=True)
class Num:
    value: float
    loc: Loc


@dataclass(frozen=True)
class Bool:
    value: bool
    loc: Loc


@dataclass(frozen=True)
class Str:
    value: str
    loc: Loc


@dataclass(frozen=True)
class Name:
    id: str
    loc: Loc


@dataclass(frozen=True)
class Index:
    name: str
    subs: tuple
    loc: Loc


@dataclass(frozen=True)
class Keyword:
    name: str
    value: object
    loc: Loc


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple
    keywords: tuple = ()
    bound: tuple | None = None  # summed/maxed index names of a reduction
    loc: Loc = field(default=None, compare=False)


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / ^
    left: object
    right: object
    loc: Loc


@dataclass(frozen=True)
class Neg:
    operand: object
    loc: Loc


@dataclass(frozen=True)
class Compare:
    op: str
    left: object
    right: object
    loc: Loc


# ---- statements -------------------------------------------------------------

@dataclass(frozen=True)
class Network:
    name: str
    loc: Loc


@dataclass(frozen=True)
class Decl:
    kind: str  # "input" | "target"
    name: str
    shape: tuple
    loc: Loc
    classes: bool = False  # `class[k]`: one class index per sample, read as one-hot of shape [k]


@dataclass(frozen=True)
class Output:
    name: str
    loc: Loc


@dataclass(frozen=True)
class Assign:
    name: str
    reduce: str | None  # "sum" | "mean" | None, only meaningful for `loss`
    expr: object
    loc: Loc


@dataclass(frozen=True)
class FnParam:
    name: str
    indices: tuple | None  # ("i",) for `a[i]`, None for a scalar argument
    default: object | None
    loc: Loc


@dataclass(frozen=True)
class FnDef:
    name: str
    params: tuple
    body: object
    loc: Loc


@dataclass(frozen=True)
class TensorParam:
    name: str
    shape: tuple
    loc: Loc


@dataclass(frozen=True)
class OptionParam:
    name: str
    default: object | None
    loc: Loc


@dataclass(frozen=True)
class ParamDecl:
    name: str
    shape: tuple
    init: object | None
    loc: Loc


@dataclass(frozen=True)
class Extent:
    index: str
    bound: object
    loc: Loc


@dataclass(frozen=True)
class Equation:
    name: str
    indices: tuple  # subscript expressions: index names, or affine in them (flatten)
    body: object
    extents: tuple
    loc: Loc


@dataclass(frozen=True)
class LayerDef:
    name: str
    params: tuple
    decls: tuple
    equation: Equation
    loc: Loc


@dataclass(frozen=True)
class StateDecl:
    name: str
    loc: Loc


@dataclass(frozen=True)
class Update:
    """`name = expr` in an optimizer: a state's new value, the parameter's, or a local."""
    name: str
    expr: object
    loc: Loc


@dataclass(frozen=True)
class OptimizerDef:
    name: str
    options: tuple  # OptionParam
    states: tuple  # StateDecl
    updates: tuple  # Update, in order
    loc: Loc


@dataclass(frozen=True)
class OptimizerUse:
    name: str
    args: tuple  # positional values, in the definition's option order
    keywords: tuple  # Keyword
    loc: Loc


@dataclass(frozen=True)
class Freeze:
    """`freeze dense_1`: the layer's parameters are not trained."""
    label: str
    loc: Loc
