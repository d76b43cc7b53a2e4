"""Built-in Python tools, safe to allow-list (the demo agents use them).

Each is a plain function of JSON arguments. ``SCHEMAS`` holds the JSON-schema ``parameters`` to
declare them with, e.g. in YAML::

    tools:
      - name: calculator
        kind: python
        function: agents.tools_builtin:calculator
        parameters: {type: object, properties: {expression: {type: string}},
                     required: [expression]}
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_EXPRESSION_CHARS: Final = 200
MAX_INT_BITS: Final = 4096  # ~1233 decimal digits: any result bigger is refused
MAX_EXPONENT: Final = 1000

SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "current_time": {
        "type": "object",
        "properties": {
            "tz": {"type": "string", "description": "IANA time zone, e.g. Europe/Paris (UTC)"}
        },
        "additionalProperties": False,
    },
    "calculator": {
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "Arithmetic: + - * / // % ** ( ), numbers, pi, e, "
                "sqrt, abs, round, floor, ceil, log, exp, sin, cos, tan, min, max",
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    },
}


def current_time(tz: str | None = None) -> dict[str, Any]:
    """The current time in UTC, or in the IANA time zone ``tz``."""
    zone: Any = UTC
    if tz:
        if len(tz) > 64:
            raise ValueError("time zone name too long")
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {tz!r}") from None
    now = datetime.now(UTC).astimezone(zone)
    return {
        "iso": now.isoformat(timespec="seconds"),
        "timezone": tz or "UTC",
        "utc_offset": now.strftime("%z"),
        "weekday": now.strftime("%A"),
        "unix": int(now.timestamp()),
    }


Number = int | float

_BINARY: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: Final[dict[type[ast.unaryop], Callable[[Any], Any]]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_CONSTANTS: Final[dict[str, float]] = {"pi": math.pi, "e": math.e, "tau": math.tau}
_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "log": math.log,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "min": min,
    "max": max,
}


def calculator(expression: str) -> Number:
    """Evaluate arithmetic safely: the expression is parsed with :mod:`ast` and only numbers,
    arithmetic operators, a few named constants and math functions are evaluated (no names,
    attributes, subscripts or calls of anything else). Huge results are refused *before* they
    are computed, so ``9**9**9`` costs nothing."""
    if not isinstance(expression, str):
        raise TypeError("expression must be a string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError("not an arithmetic expression") from None
    try:
        result = _eval(tree.body)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except OverflowError:
        raise ValueError("result too large") from None
    except RecursionError:
        raise ValueError("expression nested too deeply") from None
    except TypeError as exc:  # e.g. max(1): a function given the wrong arguments
        raise ValueError(str(exc)) from None
    return result


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"unsupported constant {value!r}")
        return _checked(value)
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ValueError(f"unknown name {node.id!r}")
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY.get(type(node.op))
        if unary is None:
            raise ValueError(f"unsupported operator {type(node.op).__name__}")
        return _checked(unary(_eval(node.operand)))
    if isinstance(node, ast.BinOp):
        binary = _BINARY.get(type(node.op))
        if binary is None:
            raise ValueError(f"unsupported operator {type(node.op).__name__}")
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _checked(binary(left, right))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            raise ValueError(
                "only sqrt, abs, round, floor, ceil, log, exp, sin, cos, tan, min, max"
            )
        if node.keywords or not node.args or len(node.args) > 8:
            raise ValueError(f"{node.func.id}: bad arguments")
        args = [_eval(arg) for arg in node.args]
        return _checked(_FUNCTIONS[node.func.id](*args))
    raise ValueError(f"unsupported syntax {type(node).__name__}")


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"exponent larger than {MAX_EXPONENT}")
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and abs(base) > 1
        and base.bit_length() * exponent > MAX_INT_BITS
    ):
        raise ValueError("result too large")


def _checked(value: Any) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"result is not a real number: {type(value).__name__}")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ValueError("result too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("result is not finite")
    return value
