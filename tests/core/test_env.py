"""The typed environment readers: every bad value is an error that names the variable."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from core.env import env_bool, env_float, env_int, env_list, env_str, env_url

REDIS = frozenset({"redis", "rediss", "unix"})
DATABASES = frozenset({"sqlite", "postgres", "postgresql"})


def test_env_str_returns_the_stripped_value() -> None:
    assert env_str("NAME", environ={"NAME": "  value "}) == "value"


def test_env_str_falls_back_to_the_default_when_unset_or_blank() -> None:
    assert env_str("NAME", "dflt", environ={}) == "dflt"
    assert env_str("NAME", "dflt", environ={"NAME": "   "}) == "dflt"


@pytest.mark.parametrize("environ", [{}, {"MY_REQUIRED": ""}, {"MY_REQUIRED": "  "}])
def test_env_str_without_default_is_required(environ: dict[str, str]) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^MY_REQUIRED: is required"):
        env_str("MY_REQUIRED", environ=environ)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("TRUE", True), ("yes", True), ("on", True), ("0", False), ("off", False)],
)
def test_env_bool_reads_the_usual_spellings(raw: str, expected: bool) -> None:
    assert env_bool("FLAG", not expected, environ={"FLAG": raw}) is expected


def test_env_bool_unset_gives_the_default() -> None:
    assert env_bool("FLAG", True, environ={}) is True


@pytest.mark.parametrize("raw", ["maybe", "2", "y", "enabled"])
def test_env_bool_rejects_other_values_naming_the_variable(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^MY_FLAG: expected a boolean") as info:
        env_bool("MY_FLAG", False, environ={"MY_FLAG": raw})
    assert repr(raw) in str(info.value)


def test_env_int_reads_an_integer_within_range() -> None:
    assert env_int("N", 5, min_value=1, max_value=10, environ={"N": " 7 "}) == 7
    assert env_int("N", 5, environ={}) == 5


@pytest.mark.parametrize("raw", ["1.5", "ten", "0x10", "1e3"])
def test_env_int_rejects_a_non_integer_naming_the_variable(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^MY_INT: expected an integer"):
        env_int("MY_INT", 1, environ={"MY_INT": raw})


def test_env_int_rejects_a_value_below_the_minimum() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^MY_INT: must be >= 1024, got 10$"):
        env_int("MY_INT", 2048, min_value=1024, environ={"MY_INT": "10"})


def test_env_int_rejects_a_value_above_the_maximum() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^MY_INT: must be <= 10, got 11$"):
        env_int("MY_INT", 1, max_value=10, environ={"MY_INT": "11"})


def test_env_float_reads_a_number_within_range() -> None:
    assert env_float("F", 1.0, min_value=0.05, max_value=30, environ={"F": "2.5"}) == 2.5


@pytest.mark.parametrize("raw", ["fast", "1,5", "--1"])
def test_env_float_rejects_a_non_number_naming_the_variable(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^MY_FLOAT: expected a number"):
        env_float("MY_FLOAT", 1.0, environ={"MY_FLOAT": raw})


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_env_float_rejects_nan_and_infinity_naming_the_variable(raw: str) -> None:
    # Without this check NaN would slip through every range comparison.
    with pytest.raises(ImproperlyConfigured, match=r"^MY_FLOAT: expected a finite number"):
        env_float("MY_FLOAT", 1.0, min_value=0.0, max_value=10.0, environ={"MY_FLOAT": raw})


@pytest.mark.parametrize("raw", ["0.01", "31", "-1"])
def test_env_float_rejects_a_value_out_of_range(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^MY_FLOAT: must be [<>]="):
        env_float("MY_FLOAT", 1.0, min_value=0.05, max_value=30, environ={"MY_FLOAT": raw})


def test_env_list_splits_and_strips_items() -> None:
    assert env_list("HOSTS", [], environ={"HOSTS": "a.example, b.example"}) == [
        "a.example",
        "b.example",
    ]
    assert env_list("HOSTS", ["x"], environ={}) == ["x"]


@pytest.mark.parametrize("raw", ["a,,b", "a,", ",a", "a, ,b"])
def test_env_list_rejects_an_empty_item_naming_the_variable(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^MY_LIST: empty item"):
        env_list("MY_LIST", [], environ={"MY_LIST": raw})


def test_env_url_accepts_an_allowed_scheme_and_defaults_when_unset() -> None:
    url = "redis://127.0.0.1:6379/0"
    assert env_url("MY_URL", None, schemes=REDIS, environ={"MY_URL": url}) == url
    assert env_url("MY_URL", None, schemes=REDIS, environ={}) is None


def test_env_url_accepts_a_unix_socket_redis_url() -> None:
    url = "unix:///run/redis/redis.sock?db=0"
    assert env_url("MY_URL", None, schemes=REDIS, environ={"MY_URL": url}) == url


def test_env_url_accepts_a_sqlite_path_without_host() -> None:
    url = "sqlite:////tmp/db.sqlite3"
    assert env_url("MY_URL", None, schemes=DATABASES, environ={"MY_URL": url}) == url


@pytest.mark.parametrize(
    ("raw", "shown"), [("http://x", "'http'"), ("mysql://x/db", "'mysql'"), ("x", "'(none)'")]
)
def test_env_url_rejects_a_bad_scheme_naming_the_variable(raw: str, shown: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^MY_URL: unsupported scheme") as info:
        env_url("MY_URL", None, schemes=REDIS, environ={"MY_URL": raw})
    message = str(info.value)
    assert shown in message
    assert "redis, rediss, unix" in message


def test_env_url_rejects_a_url_without_host() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^MY_URL: URL has no host"):
        env_url("MY_URL", None, schemes=DATABASES, environ={"MY_URL": "postgres://"})


@pytest.mark.parametrize("raw", ["redis://localhost:notaport/0", "redis://localhost:99999/0"])
def test_env_url_rejects_a_bad_port(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^MY_URL: invalid port"):
        env_url("MY_URL", None, schemes=REDIS, environ={"MY_URL": raw})


@pytest.mark.parametrize(
    "raw",
    [
        "redis://user:hunter2secret@localhost:notaport/0",
        "redis://:hunter2secret@localhost:99999/0",
        "postgres://bw:hunter2secret@db:5x/breakwater",
    ],
)
def test_env_url_errors_never_print_the_password(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        env_url("MY_URL", None, schemes=REDIS | DATABASES, environ={"MY_URL": raw})
    message = str(info.value)
    assert message.startswith("MY_URL: invalid port")
    assert "hunter2secret" not in message
    assert ":***@" in message
