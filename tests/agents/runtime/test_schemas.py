"""Tool schemas (Draft 2020-12, by the jsonschema library): a tool's parameters checked as a
schema, and its calls' arguments validated against them, each failure naming the field."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agents.runtime import schemas
from agents.runtime.schemas import MAX_SCHEMA_DEPTH, arguments_error, schema_problem

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "n": {"type": "integer"},
        "x": {"type": ["number", "null"]},
        "unit": {"enum": ["c", "f"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}},
            "required": ["lat"],
        },
    },
    "additionalProperties": False,
}


def test_the_arguments_check_covers_types_enums_nesting_and_extra_properties() -> None:
    schema = WEATHER
    assert arguments_error({"n": 3, "x": None, "unit": "c", "tags": ["a"]}, schema) is None
    assert arguments_error({"n": 3.0, "x": 1}, schema) is None  # 3.0 is an integer in JSON
    assert arguments_error({"n": True}, schema) == "arguments.n: expected integer, got boolean"
    assert arguments_error({"n": 3.5}, schema) == "arguments.n: expected integer, got number"
    assert arguments_error({"x": "1"}, schema) == "arguments.x: expected number or null, got string"
    assert arguments_error({"unit": "k"}, schema) == 'arguments.unit: must be one of ["c", "f"]'
    assert arguments_error({"tags": ["a", 1]}, schema) == (
        "arguments.tags[1]: expected string, got integer"
    )
    assert arguments_error({"where": {}}, schema) == (
        "arguments.where: missing required property 'lat'"
    )
    assert arguments_error({"other": 1}, schema) == "arguments: unexpected property 'other'"


RICH: dict[str, Any] = {
    "type": "object",
    "$defs": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}},
    "properties": {
        "currency": {"$ref": "#/$defs/code"},
        "amount": {"type": "number", "minimum": 0, "exclusiveMaximum": 1000},
        "target": {
            "oneOf": [
                {"type": "string", "format": "email"},
                {
                    "type": "object",
                    "properties": {"iban": {"type": "string"}},
                    "required": ["iban"],
                },
            ]
        },
        "rounding": {"enum": ["up", "down", None, True]},
        "either": {"oneOf": [{"type": "number"}, {"type": "integer"}]},
    },
}


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"currency": "EUR", "amount": 0, "target": {"iban": "DE00"}, "rounding": None}, None),
        ({"target": "not checked: format is an annotation"}, None),
        ({"currency": "eur"}, "arguments.currency: 'eur' does not match '^[A-Z]{3}$'"),
        ({"amount": -0.5}, "arguments.amount: -0.5 is less than the minimum of 0"),
        (
            {"amount": 1000},
            "arguments.amount: 1000 is greater than or equal to the maximum of 1000",
        ),
        ({"target": {"bic": "X"}}, "arguments.target: missing required property 'iban'"),
        (
            {"target": 3},
            "arguments.target: matches none of the oneOf alternatives (expected string, got "
            "integer; expected object, got integer)",
        ),
        ({"either": 2}, "arguments.either: matches more than one of the oneOf alternatives"),
        ({"rounding": "half"}, 'arguments.rounding: must be one of ["up", "down", null, true]'),
        ({"rounding": 1}, 'arguments.rounding: must be one of ["up", "down", null, true]'),
    ],
    ids=[
        "valid",
        "format",
        "pattern",
        "minimum",
        "exclusiveMaximum",
        "oneOf-object",
        "oneOf-none",
        "oneOf-both",
        "enum",
        "enum-1-is-not-true",
    ],
)
def test_the_arguments_check_honours_the_whole_draft(arguments: Any, error: str | None) -> None:
    assert arguments_error(arguments, RICH) == error


@pytest.mark.parametrize(
    ("schema", "where", "reason"),
    [
        (
            {"type": "nope"},
            "parameters.type",
            "must be one of array, boolean, integer, null, number, object, string "
            "(or a list of them)",
        ),
        ({"type": ["string", 3]}, "parameters.type.1", "must be one of"),
        (
            {"type": "object", "properties": {"a": {"type": "string", "pattern": "(["}}},
            "parameters.properties.a.pattern",
            '"([" is not a valid regex',
        ),
        (
            {"type": "object", "properties": {"a": {"minimum": "3"}}},
            "parameters.properties.a.minimum",
            "expected number, got string",
        ),
        ({"oneOf": []}, "parameters.oneOf", "[] should be non-empty"),
        ({"oneOf": [{"enum": "a"}]}, "parameters.oneOf.0.enum", "expected array, got string"),
        ({"required": "a"}, "parameters.required", "expected array, got string"),
        ({"properties": {"a": 3}}, "parameters.properties.a", "expected object or boolean"),
        # draft-07's tuple form: 2020-12 spells it prefixItems
        ({"items": [{"type": "string"}]}, "parameters.items", "expected object or boolean"),
        ([], "parameters", "must be a JSON Schema (an object or a boolean), not array"),
    ],
    ids=[
        "type",
        "type-list",
        "pattern",
        "minimum",
        "oneOf-empty",
        "nested",
        "required",
        "property",
        "draft-07-items",
        "not-a-schema",
    ],
)
def test_a_malformed_schema_is_refused_naming_the_field(
    schema: Any, where: str, reason: str
) -> None:
    problem = schema_problem(schema)
    assert problem is not None
    assert problem.at("parameters", brackets=False) == where
    assert problem.reason.startswith(reason)


def test_the_schemas_the_draft_allows_pass() -> None:
    assert schema_problem(RICH) is None
    assert schema_problem(True) is None
    assert schema_problem({"type": "object", "prefixItems": [{"type": "string"}]}) is None


def test_a_schema_nested_beyond_the_limit_is_refused_before_the_library_recurses() -> None:
    schema: dict[str, Any] = {}
    for _ in range(MAX_SCHEMA_DEPTH - 1):  # MAX_SCHEMA_DEPTH objects in all
        schema = {"items": schema}
    assert schema_problem(schema) is None
    problem = schema_problem({"items": schema})
    assert problem is not None
    assert problem.reason == f"nested deeper than {MAX_SCHEMA_DEPTH} levels"
    assert problem.path == ("items",) * MAX_SCHEMA_DEPTH


def test_a_validator_is_built_once_per_schema_whatever_its_key_order() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 7}}}
    reordered = {"properties": {"a": {"minimum": 7, "type": "integer"}}, "type": "object"}
    misses, hits = schemas._BUILT.misses, schemas._BUILT.hits
    for arguments in ({"a": 7}, {"a": 8}, {"a": 6}):
        arguments_error(arguments, schema)
    assert arguments_error({"a": 1}, reordered) == "arguments.a: 1 is less than the minimum of 7"
    assert (schemas._BUILT.misses - misses, schemas._BUILT.hits - hits) == (1, 3)


def test_a_schema_checked_once_is_not_checked_again() -> None:
    schema = {"type": "object", "properties": {"b": {"type": "string", "maxLength": 9}}}
    misses, hits = schemas._CHECKED.misses, schemas._CHECKED.hits
    assert schema_problem(schema) is None
    assert schema_problem(json.loads(json.dumps(schema))) is None
    assert (schemas._CHECKED.misses - misses, schemas._CHECKED.hits - hits) == (1, 1)


def test_a_stored_tool_with_an_invalid_schema_fails_every_call_saying_why() -> None:
    broken = {"type": "object", "properties": {"a": {"type": "text"}}}
    assert arguments_error({}, broken) == (
        "arguments: cannot be checked, the tool's parameters are not a valid JSON Schema "
        "(parameters.properties.a.type: must be one of array, boolean, integer, null, number, "
        "object, string (or a list of them))"
    )


@pytest.fixture
def schema_server() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server holding a schema; it records every path asked for."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = json.dumps({"type": "string"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_a_remote_ref_is_an_error_and_never_fetched(
    schema_server: tuple[str, list[str]],
) -> None:
    url, asked = schema_server
    schema = {"type": "object", "properties": {"a": {"$ref": f"{url}/name.json"}}}

    error = arguments_error({"a": 3}, schema)

    assert error is not None
    assert error.startswith("arguments: cannot be checked, the tool's parameters have an ")
    assert f"unresolvable $ref (Unresolvable: {url}/name.json)" in error
    assert asked == []


def test_arguments_too_deep_for_a_recursive_schema_are_an_error_not_a_crash() -> None:
    tree = {
        "$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}}},
        "$ref": "#/$defs/node",
    }
    value: dict[str, Any] = {}
    for _ in range(500):
        value = {"child": value}
    assert arguments_error({"child": {"child": {}}}, tree) is None
    assert arguments_error(value, tree) == "arguments: nested too deeply to check"
