"""``@zmlx.jit``: a Python function lowered to zmlx's expression language.

The function's AST is read (never its text pasted into a kernel) and each
node is written in the expression language: arithmetic, ``**``,
comparisons, ``and`` / ``or`` / ``not``, conditional expressions,
``math.*`` / ``zmlx.*`` / builtin ``abs``, ``min``, ``max`` calls, and local
assignments. The result is an :func:`zmlx.elementwise` op, so it has
symbolic VJP and JVP: ``zmlx.grad`` differentiates through it.

Positional parameters are the inputs (arrays, broadcast with NumPy rules);
keyword-only parameters are scalar parameters, passed per call without a
recompile::

    @zmlx.jit
    def leaky(x, *, slope=0.01):
        return x if x > 0 else slope * x
"""
from __future__ import annotations

import ast
import functools
import inspect
import math
import textwrap
from typing import Callable, Dict, List

from . import _core

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_CMPOPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
# Python names of the expression language's functions (math.*, zmlx.*, builtins).
_FUNCS = {
    "exp", "exp2", "expm1", "log", "log2", "log1p", "sqrt", "rsqrt", "abs", "sign", "sin",
    "cos", "tan", "tanh", "sinh", "cosh", "asin", "acos", "atan", "atan2", "erf", "erfc",
    "floor", "ceil", "round", "min", "max", "clamp", "pow", "where", "sigmoid", "silu", "gelu",
    "gelu_tanh", "softplus", "relu", "leaky_relu", "elu", "mish",
}
_RENAME = {"fabs": "abs", "asinh": None, "fmin": "min", "fmax": "max"}
_CONSTANTS = {"pi": repr(math.pi), "e": repr(math.e), "inf": "inf", "nan": "nan", "tau": repr(math.tau)}


class JitError(SyntaxError):
    """A construct @zmlx.jit cannot lower; points at the function's source line."""


class _Lowering:
    def __init__(self, fn: Callable, source: str, first_line: int, filename: str):
        self.fn = fn
        self.source = source
        self.first_line = first_line
        self.filename = filename
        self.names: Dict[str, str] = {}

    def error(self, node: ast.AST, what: str) -> JitError:
        line = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0)
        text = self.source.splitlines()[line - 1] if self.source else ""
        return JitError(f"@zmlx.jit cannot lower {what}", (self.filename, line + self.first_line - 1,
                                                           col + 1, text))

    def expr(self, n: ast.AST) -> str:
        if isinstance(n, ast.Constant):
            if isinstance(n.value, bool):
                return "1" if n.value else "0"
            if isinstance(n.value, (int, float)):
                return repr(float(n.value)) if math.isfinite(n.value) else ("inf" if n.value > 0 else "-inf") if not math.isnan(n.value) else "nan"
            raise self.error(n, f"the constant {n.value!r} (numbers only)")
        if isinstance(n, ast.Name):
            if n.id in self.names:
                return self.names[n.id]
            if n.id in ("True", "False"):
                return "1" if n.id == "True" else "0"
            raise self.error(n, f"the name '{n.id}' (not an input, parameter or earlier assignment)")
        if isinstance(n, ast.Attribute):
            if isinstance(n.value, ast.Name) and n.value.id in ("math", "np", "numpy") and n.attr in _CONSTANTS:
                return _CONSTANTS[n.attr]
            raise self.error(n, f"the attribute '{ast.unparse(n)}'")
        if isinstance(n, ast.BinOp):
            op = _BINOPS.get(type(n.op))
            if not op:
                raise self.error(n, f"the operator {type(n.op).__name__}")
            return f"({self.expr(n.left)} {op} {self.expr(n.right)})"
        if isinstance(n, ast.UnaryOp):
            if isinstance(n.op, ast.USub):
                return f"(-{self.expr(n.operand)})"
            if isinstance(n.op, ast.UAdd):
                return self.expr(n.operand)
            if isinstance(n.op, ast.Not):
                return f"(!{self.expr(n.operand)})"
            raise self.error(n, f"the operator {type(n.op).__name__}")
        if isinstance(n, ast.Compare):
            if len(n.ops) != 1:
                raise self.error(n, "a chained comparison (write a < b and b < c)")
            op = _CMPOPS.get(type(n.ops[0]))
            if not op:
                raise self.error(n, f"the comparison {type(n.ops[0]).__name__}")
            return f"({self.expr(n.left)} {op} {self.expr(n.comparators[0])})"
        if isinstance(n, ast.BoolOp):
            op = " && " if isinstance(n.op, ast.And) else " || "
            return "(" + op.join(self.expr(v) for v in n.values) + ")"
        if isinstance(n, ast.IfExp):
            return f"({self.expr(n.test)} ? {self.expr(n.body)} : {self.expr(n.orelse)})"
        if isinstance(n, ast.Call):
            return self.call(n)
        raise self.error(n, f"a {type(n).__name__} expression")

    def call(self, n: ast.Call) -> str:
        f = n.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and \
                f.value.id in ("math", "zmlx", "np", "numpy"):
            name = f.attr
        elif isinstance(f, ast.Name) and f.id in ("abs", "min", "max", "pow", "round"):
            name = f.id
        else:
            raise self.error(n, f"the call {ast.unparse(f)}() (math.*, zmlx.* or abs/min/max/pow/round)")
        name = _RENAME.get(name, name)
        if name not in _FUNCS:
            raise self.error(n, f"the function '{ast.unparse(f)}' (no such expression function)")
        if n.keywords:
            raise self.error(n, "keyword arguments in a call")
        return f"{name}(" + ", ".join(self.expr(a) for a in n.args) + ")"

    def lower(self) -> "tuple[str, List[str], List[str], Dict[str, float]]":
        tree = ast.parse(self.source)
        fdef = tree.body[0]
        if not isinstance(fdef, ast.FunctionDef):
            raise self.error(fdef, "something that is not a function definition")
        a = fdef.args
        if a.vararg or a.kwarg or a.posonlyargs:
            raise self.error(fdef, "*args, **kwargs or positional-only parameters")
        inputs = [p.arg for p in a.args]
        params = [p.arg for p in a.kwonlyargs]
        defaults = {}
        for p, d in zip(a.kwonlyargs, a.kw_defaults):
            if d is not None:
                defaults[p.arg] = float(ast.literal_eval(d))
        for name in inputs + params:
            self.names[name] = name
        lines = []
        body = [s for s in fdef.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        for i, s in enumerate(body):
            last = i == len(body) - 1
            if isinstance(s, ast.Assign) and not last:
                if len(s.targets) != 1 or not isinstance(s.targets[0], ast.Name):
                    raise self.error(s, "an assignment to anything but one name")
                local = f"v{i}_{s.targets[0].id}"
                lines.append(f"{local} = {self.expr(s.value)}")
                self.names[s.targets[0].id] = local
            elif isinstance(s, ast.Return) and last and s.value is not None:
                lines.append(self.expr(s.value))
            else:
                raise self.error(s, f"the statement {type(s).__name__} (assignments, then one return)")
        if not lines:
            raise self.error(fdef, "an empty function")
        return "\n".join(lines), inputs, params, defaults


class JitFunction:
    """A Python function lowered to an elementwise op (see :func:`jit`)."""

    def __init__(self, fn: Callable):
        functools.update_wrapper(self, fn)
        try:
            source = textwrap.dedent(inspect.getsource(fn))
            first = inspect.getsourcelines(fn)[1]
            filename = inspect.getsourcefile(fn) or "<jit>"
        except (OSError, TypeError) as e:
            raise JitError(f"@zmlx.jit needs the function's source: {e}") from e
        # drop decorators: the def is what is lowered
        tree = ast.parse(source)
        fdef = tree.body[0]
        if isinstance(fdef, ast.FunctionDef) and fdef.decorator_list:
            start = fdef.lineno - 1
            source = "\n".join(source.splitlines()[start:])
            first += start
        self.expr, self.inputs, self.params, self.defaults = _Lowering(fn, source, first, filename).lower()
        self.op = _core.elementwise(self.expr, self.inputs, self.params or None)

    def __call__(self, *arrays, **params):
        from . import asarray
        if len(arrays) != len(self.inputs):
            raise TypeError(f"{self.__name__} takes {len(self.inputs)} array(s), {len(arrays)} given")
        unknown = set(params) - set(self.params)
        if unknown:
            raise TypeError(f"{self.__name__}: unknown parameter(s) {sorted(unknown)}")
        values = []
        for p in self.params:
            if p in params:
                values.append(float(params[p]))
            elif p in self.defaults:
                values.append(self.defaults[p])
            else:
                raise TypeError(f"{self.__name__}: parameter '{p}' has no value")
        ins = [asarray(a) for a in arrays]
        return self.op(*ins, params=values or None)


def jit(fn: Callable) -> JitFunction:
    """Lower ``fn`` to an elementwise op with symbolic gradients (see the module docs)."""
    return JitFunction(fn)
