"""JSON Schema for tools: a tool's ``parameters`` checked as a schema, its calls' arguments
validated against it, both by the ``jsonschema`` library.

One draft, **2020-12** (what Anthropic's ``input_schema`` and MCP name, and what OpenAI's
``$defs``/``anyOf`` subset belongs to): a ``$schema`` naming another draft is not followed, so
draft-07 tuple ``items`` (a list) is refused; ``prefixItems`` is the 2020-12 form. ``format`` is
an annotation, as the draft says (not asserted on arguments), except that the schema check
asserts ``regex`` on ``pattern``, so a pattern Python cannot compile is refused up front.

``$ref`` resolves inside the schema only: the registry has no retrieval, so a remote reference
is an error, never a request (jsonschema's default still fetches it with ``urlopen``).

Both are cached by a digest of the schema's canonical JSON (bounded, least recently used out),
so a validator is built (and its schema checked) once per tool definition, and a client
repeating the same ``tools`` on every request pays the schema check once: the 2020-12
metaschema costs about 3 ms for a 300-byte schema (about 14 us per byte), against about 60 us
to validate arguments with a built validator.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
import referencing.exceptions
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry

Path = tuple[str | int, ...]

MAX_SCHEMA_DEPTH = 64
"""JSON nesting (objects and arrays) allowed in a client's schema. The checks recurse about ten
Python frames per schema level, so this keeps them far from the recursion limit; about 32
levels of ``properties``."""

_CACHED_SCHEMAS = 1024  # a digest and a Problem each
_CACHED_VALIDATORS = 1024  # a validator holds its schema
_REASON_CHARS = 200
_SIMPLE_TYPES = {"$ref": "#/$defs/simpleTypes"}  # how the 2020-12 metaschema spells `type`
_JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")

# No ``retrieve``: a ``$ref`` to anything but the schema itself (and the drafts' own metaschemas)
# is Unresolvable.
_NO_REMOTE: Registry[Any] = Registry()

# What ``check_schema`` does, built once: the metaschema, with ``format`` asserted (``regex``).
_META = Draft202012Validator(
    Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER
)


@dataclass(frozen=True)
class Problem:
    """What is wrong (``reason``) and where (``path``, from the checked value's root)."""

    path: Path
    reason: str

    def at(self, root: str, *, brackets: bool = True) -> str:
        """``root`` followed by the path: ``root.a[0]`` (or ``root.a.0`` without brackets)."""
        return _dotted(root, self.path, brackets=brackets)


def _dotted(root: str, path: Path, *, brackets: bool = True) -> str:
    out = root
    for part in path:
        if brackets and isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def json_type(value: Any) -> str:
    """The JSON type name of a parsed JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def schema_problem(schema: Any, *, max_depth: int | None = MAX_SCHEMA_DEPTH) -> Problem | None:
    """The first thing that makes ``schema`` an invalid Draft 2020-12 schema, or None.

    ``max_depth`` bounds the nesting before the library recurses into it (None: the caller's
    input is bounded already, e.g. by the YAML reader's own limit)."""
    if not isinstance(schema, dict | bool):
        return Problem(
            (), f"must be a JSON Schema (an object or a boolean), not {json_type(schema)}"
        )
    if max_depth is not None:
        deep = _too_deep(schema, max_depth)
        if deep is not None:
            return Problem(deep, f"nested deeper than {max_depth} levels")
    canonical = _canonical(schema)
    if canonical is None:
        return _check(schema)
    return _CHECKED.get(_digest(canonical), lambda: _check(schema))


def arguments_error(value: Any, schema: Mapping[str, Any], path: str = "arguments") -> str | None:
    """``path.to.field: reason`` for the most relevant way ``value`` breaks ``schema``, or None.

    The validator for ``schema`` is built once; a schema that is itself invalid (a tool stored
    before schemas were checked) makes every call fail, saying why."""
    checker = _validator(schema)
    if isinstance(checker, Problem):
        return (
            f"{path}: cannot be checked, the tool's parameters are not a valid JSON Schema "
            f"({checker.at('parameters')}: {checker.reason})"
        )
    try:
        error = best_match(checker.iter_errors(value))
    except referencing.exceptions.Unresolvable as exc:
        return f"{path}: cannot be checked, the tool's parameters have an unresolvable $ref ({exc})"
    except RecursionError:
        return f"{path}: nested too deeply to check"
    if error is None:
        return None
    return f"{_dotted(path, tuple(error.absolute_path))}: {_reason(error)}"


# --- internals -------------------------------------------------------------------------------


T = TypeVar("T")


class _Lru(Generic[T]):
    """At most ``size`` values by key, the least recently used dropped first. Thread-safe (the
    config check runs in sync threads, the request check on the event loop); a value is computed
    outside the lock, so two threads may both compute a new one, and both get a right answer."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[bytes, T] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self.hits += 1
                self._items.move_to_end(key)
                return self._items[key]
            self.misses += 1
        value = compute()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


_CHECKED: _Lru[Problem | None] = _Lru(_CACHED_SCHEMAS)
_BUILT: _Lru[Draft202012Validator | Problem] = _Lru(_CACHED_VALIDATORS)


def _digest(canonical: bytes) -> bytes:
    """The key kept, rather than the schema: a 1 MiB client schema costs 16 bytes of cache."""
    return hashlib.blake2b(canonical, digest_size=16).digest()


def _canonical(schema: Any) -> bytes | None:
    """The cache key: sorted keys, so the same schema written in another order shares it."""
    try:
        return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # not plain JSON, or nested beyond orjson's 255
        return None


def _check(schema: Any) -> Problem | None:
    try:
        error = best_match(_META.iter_errors(schema))
    except RecursionError:
        return Problem((), "nested too deeply to check")
    if error is None:
        return None
    return Problem(tuple(error.absolute_path), _reason(error))


def _validator(schema: Mapping[str, Any]) -> Draft202012Validator | Problem:
    """A ``Draft202012Validator`` for ``schema``, or the :class:`Problem` that prevents one."""
    canonical = _canonical(schema)
    if canonical is None:
        return _build(schema)
    # Built from the canonical copy: a caller mutating its dict later cannot change it.
    return _BUILT.get(_digest(canonical), lambda: _build(orjson.loads(canonical)))


def _build(schema: Any) -> Draft202012Validator | Problem:
    problem = schema_problem(schema, max_depth=None)
    if problem is not None:
        return problem
    return Draft202012Validator(schema, registry=_NO_REMOTE)


def _too_deep(schema: Any, limit: int) -> Path | None:
    stack: list[tuple[Any, Path]] = [(schema, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            children: list[tuple[str | int, Any]] = list(node.items())
        elif isinstance(node, list):
            children = list(enumerate(node))
        else:
            continue
        if len(path) >= limit:
            return path
        stack.extend((child, (*path, key)) for key, child in reversed(children))
    return None


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _reason(error: ValidationError) -> str:
    """The failure in JSON terms (``null``, not ``None``); jsonschema's own words otherwise."""
    keyword = error.validator
    expected: Any = error.validator_value  # typed "Any | Unset": set on every error yielded
    value: Any = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if keyword == "type":
        names = [expected] if isinstance(expected, str) else [str(t) for t in expected]
        reason = f"expected {' or '.join(names)}, got {json_type(value)}"
    elif keyword == "enum":
        reason = f"must be one of {json.dumps(expected)[:100]}"
    elif keyword == "const":
        reason = f"must be {_show(expected)}"
    elif keyword == "required" and isinstance(value, dict):
        missing = [name for name in expected if name not in value]
        reason = f"missing required property {missing[0]!r}" if missing else error.message
    elif keyword == "additionalProperties" and isinstance(value, dict):
        known = schema.get("properties", {})
        patterns = list(schema.get("patternProperties", {}))
        extra = [
            name
            for name in value
            if name not in known and not any(re.search(p, name) for p in patterns)
        ]
        reason = f"unexpected propert{'y' if len(extra) == 1 else 'ies'} " + ", ".join(
            repr(name) for name in extra[:5]
        )
    elif keyword == "anyOf" and _SIMPLE_TYPES in expected:
        # The metaschema's ``type`` keyword: a type name or a list of them.
        reason = f"must be one of {', '.join(_JSON_TYPES)} (or a list of them)"
    elif keyword in ("anyOf", "oneOf") and error.context:
        options = dict.fromkeys(  # in order, without repeats
            (f"{_dotted('', tuple(sub.relative_path))}: " if sub.relative_path else "")
            + _reason(sub)
            for sub in error.context
        )
        reason = f"matches none of the {keyword} alternatives ({'; '.join(options)})"
    elif keyword == "oneOf":
        reason = "matches more than one of the oneOf alternatives"
    elif keyword == "format":
        reason = f"{_show(value)} is not a valid {expected}"
    elif error.schema is False:
        reason = "is not allowed here (its schema is false)"
    else:
        reason = error.message
    return reason if len(reason) <= _REASON_CHARS else f"{reason[: _REASON_CHARS - 3]}..."


__all__ = [
    "MAX_SCHEMA_DEPTH",
    "Path",
    "Problem",
    "arguments_error",
    "json_type",
    "schema_problem",
]
