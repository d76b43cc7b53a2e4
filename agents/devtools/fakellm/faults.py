"""The fault model of fakellm: what can go wrong, how often, and the per-request override.

Pure Python (no aiohttp, no Django), so the CLI, the admin API and tests share one validator.
Every random choice comes from one ``random.Random``; each generation request draws the same
number of values whatever the configuration, so a seed reproduces the same outcome sequence
for the same sequence of requests.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

# Statuses a fault can answer with; the per-request override also takes any 4xx/5xx.
ERROR_STATUSES = (429, 500, 502, 503, 529)
MAX_MS = 600_000.0
MAX_RETRY_AFTER_S = 86_400.0
MAX_OUTPUT_TOKENS = 4096

Outcome = Literal["ok", "error", "quota", "hang", "cut", "malformed"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "error", "quota", "hang", "cut", "malformed")
# How a malformed answer is broken. truncated: half a JSON body (no usage), or one cut stream
# event; invalid_utf8: the whole answer, usage included, with bytes in its text that are not
# UTF-8 (an upstream that did the work and billed it, but whose text cannot be decoded).
MalformedMode = Literal["truncated", "invalid_utf8"]
MALFORMED_MODES: tuple[MalformedMode, ...] = ("truncated", "invalid_utf8")


class FaultConfigError(ValueError):
    """A bad fault setting; ``field`` names it (config key, CLI flag or header directive)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _number(name: str, value: Any, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultConfigError(name, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise FaultConfigError(name, f"must be between {low:g} and {high:g}, got {value!r}")
    return number


def _integer(name: str, value: Any, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultConfigError(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise FaultConfigError(name, f"must be between {low} and {high}, got {value!r}")
    return value


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise FaultConfigError(name, f"must be true or false, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """The server-wide fault settings. Construction validates, naming the bad field."""

    latency_ms: float = 0.0  # fixed delay before the response (or before stream headers)
    jitter_ms: float = 0.0  # uniform +- around latency_ms, never below zero
    error_rate: float = 0.0  # share of requests answered with error_status
    error_status: int = 500
    retry_after: float | None = None  # seconds, sent as Retry-After on 429/503
    quota_exhausted: bool = False  # every request: OpenAI 429 insufficient_quota, Anthropic 400
    hang_rate: float = 0.0  # accept, never answer until the client goes away
    cut_stream_rate: float = 0.0  # streams stop mid-way, no terminal event, connection closed
    malformed_rate: float = 0.0  # 200 with invalid JSON / invalid SSE data
    malformed_mode: MalformedMode = "truncated"  # how a malformed answer is broken
    first_token_ms: float = 0.0  # streams: delay before the first content delta
    token_ms: float = 0.0  # streams: delay between content deltas
    output_tokens: int = 16  # words in a text reply (before max_tokens)
    tool_call: bool = False  # answer with a tool call when tools are declared
    api_key: str | None = None  # when set, requests must carry exactly this key
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "first_token_ms", "token_ms"):
            self._set(name, _number(name, getattr(self, name), low=0, high=MAX_MS))
        for name in ("error_rate", "hang_rate", "cut_stream_rate", "malformed_rate"):
            self._set(name, _number(name, getattr(self, name), low=0, high=1))
        if (
            isinstance(self.error_status, bool)
            or not isinstance(self.error_status, int)
            or self.error_status not in ERROR_STATUSES
        ):
            raise FaultConfigError(
                "error_status",
                f"must be one of {', '.join(map(str, ERROR_STATUSES))}, got {self.error_status!r}",
            )
        if self.retry_after is not None:
            self._set(
                "retry_after",
                _number("retry_after", self.retry_after, low=0, high=MAX_RETRY_AFTER_S),
            )
        if self.malformed_mode not in MALFORMED_MODES:
            raise FaultConfigError(
                "malformed_mode",
                f"must be one of {', '.join(MALFORMED_MODES)}, got {self.malformed_mode!r}",
            )
        _boolean("quota_exhausted", self.quota_exhausted)
        _boolean("tool_call", self.tool_call)
        _integer("output_tokens", self.output_tokens, low=1, high=MAX_OUTPUT_TOKENS)
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise FaultConfigError(
                "api_key", f"must be a non-empty string or null, got {self.api_key!r}"
            )
        if self.seed is not None:
            _integer("seed", self.seed, low=-(2**63), high=2**63 - 1)

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, base: FaultConfig | None = None
    ) -> FaultConfig:
        """Build from JSON-like data: over ``base`` (merge) or over the defaults (replace).

        Unknown keys are rejected so a typo never silently leaves a fault off.
        """
        if not isinstance(data, Mapping):
            raise FaultConfigError("body", "must be a JSON object")
        known = cls.field_names()
        for key in data:
            if key not in known:
                raise FaultConfigError(
                    str(key), f"unknown field; expected one of {', '.join(known)}"
                )
        try:
            return replace(base if base is not None else cls(), **dict(data))
        except TypeError as exc:  # pragma: no cover - replace() only fails on unknown keys
            raise FaultConfigError("body", str(exc)) from None


@dataclass(frozen=True, slots=True)
class Override:
    """What the ``x-fakellm-fault`` header forces for one request (None = not forced)."""

    outcome: Outcome | None = None
    malformed_mode: MalformedMode | None = None
    status: int | None = None
    retry_after: float | None = None
    latency_ms: float | None = None
    first_token_ms: float | None = None
    token_ms: float | None = None
    cut_after: int | None = None
    tool_call: bool | None = None
    output_tokens: int | None = None


_FLAG_OUTCOMES: dict[str, Outcome] = {
    "ok": "ok",
    "hang": "hang",
    "cut": "cut",
    "malformed": "malformed",
    "quota": "quota",
}


def _header_number(key: str, raw: str, *, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise FaultConfigError(f"x-fakellm-fault {key}", f"must be a number, got {raw!r}") from None
    return _number(f"x-fakellm-fault {key}", value, low=0, high=high)


def _header_int(key: str, raw: str, *, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise FaultConfigError(
            f"x-fakellm-fault {key}", f"must be an integer, got {raw!r}"
        ) from None
    return _integer(f"x-fakellm-fault {key}", value, low=low, high=high)


def parse_override(header: str) -> Override:
    """Parse ``x-fakellm-fault``: directives separated by ``,`` or ``;``.

    ``ok`` | ``hang`` | ``cut`` | ``cut=N`` | ``malformed`` | ``malformed=invalid-utf8`` |
    ``malformed=truncated`` | ``quota`` | ``status=503`` |
    ``retry-after=S`` | ``latency=MS`` | ``first-token=MS`` | ``token=MS`` | ``tool-call`` |
    ``tool-call=0|1`` | ``tokens=N``. Raises :class:`FaultConfigError` naming the directive.
    """
    values: dict[str, Any] = {}
    for part in header.replace(";", ",").split(","):
        item = part.strip()
        if not item:
            continue
        key, _, raw = item.partition("=")
        key = key.strip().lower().replace("_", "-")
        raw = raw.strip()
        if key == "malformed" and raw:
            mode = raw.lower().replace("-", "_")
            if mode not in MALFORMED_MODES:
                raise FaultConfigError(
                    "x-fakellm-fault malformed",
                    f"must be truncated or invalid-utf8, got {raw!r}",
                )
            _set_outcome(values, "malformed")
            values["malformed_mode"] = mode
        elif key in _FLAG_OUTCOMES and (not raw or key == "cut"):
            _set_outcome(values, _FLAG_OUTCOMES[key])
            if key == "cut" and raw:
                values["cut_after"] = _header_int("cut", raw, low=0, high=MAX_OUTPUT_TOKENS)
        elif key == "status":
            values["status"] = _header_int("status", raw, low=400, high=599)
            _set_outcome(values, "error")
        elif key == "retry-after":
            values["retry_after"] = _header_number(key, raw, high=MAX_RETRY_AFTER_S)
        elif key in ("latency", "first-token", "token"):
            name = {"latency": "latency_ms", "first-token": "first_token_ms", "token": "token_ms"}
            values[name[key]] = _header_number(key, raw, high=MAX_MS)
        elif key == "tool-call":
            if raw not in ("", "0", "1", "true", "false"):
                raise FaultConfigError("x-fakellm-fault tool-call", f"must be 0 or 1, got {raw!r}")
            values["tool_call"] = raw in ("", "1", "true")
        elif key == "tokens":
            values["output_tokens"] = _header_int(key, raw, low=1, high=MAX_OUTPUT_TOKENS)
        else:
            raise FaultConfigError(
                f"x-fakellm-fault {key or item}",
                "unknown directive; expected ok, hang, cut[=N], malformed[=truncated|invalid-utf8], "
                "quota, status=N, "
                "retry-after=S, latency=MS, first-token=MS, token=MS, tool-call[=0|1], tokens=N",
            )
    return Override(**values)


def _set_outcome(values: dict[str, Any], outcome: Outcome) -> None:
    previous = values.get("outcome")
    if previous is not None and previous != outcome:
        raise FaultConfigError(
            "x-fakellm-fault", f"conflicting outcomes {previous!r} and {outcome!r}"
        )
    values["outcome"] = outcome


@dataclass(slots=True)
class Decision:
    """What happens to one generation request."""

    outcome: Outcome
    status: int  # HTTP status for error/quota outcomes; 200 otherwise
    retry_after: float | None
    delay_s: float
    first_token_s: float
    token_s: float
    cut_after: int | None  # content chunks sent before a cut; None = half
    tool_call: bool
    output_tokens: int
    malformed_mode: MalformedMode = "truncated"


class FaultModel:
    """Current configuration plus the random source; one per server."""

    def __init__(self, config: FaultConfig) -> None:
        self.initial = config
        self.config = config
        self.rng = random.Random(config.seed)

    def set_config(self, config: FaultConfig, *, reseed: bool) -> None:
        self.config = config
        if reseed:
            self.rng = random.Random(config.seed)

    def reset(self) -> None:
        self.set_config(self.initial, reseed=True)

    def decide(self, *, stream: bool, override: Override | None) -> Decision:
        cfg = self.config
        rand = self.rng.random
        # Always five draws, so the sequence does not depend on which faults are on.
        u_hang, u_error, u_malformed, u_cut, u_jitter = rand(), rand(), rand(), rand(), rand()
        ov = override or _NO_OVERRIDE
        outcome: Outcome
        if ov.outcome is not None:
            outcome = ov.outcome
        elif cfg.quota_exhausted:
            outcome = "quota"
        elif u_hang < cfg.hang_rate:
            outcome = "hang"
        elif u_error < cfg.error_rate:
            outcome = "error"
        elif u_malformed < cfg.malformed_rate:
            outcome = "malformed"
        elif stream and u_cut < cfg.cut_stream_rate:
            outcome = "cut"
        else:
            outcome = "ok"

        if outcome == "error":
            status = ov.status if ov.status is not None else cfg.error_status
        elif outcome == "quota":
            status = 429
        else:
            status = 200
        retry_after = ov.retry_after if ov.retry_after is not None else cfg.retry_after

        if ov.latency_ms is not None:
            delay_ms = ov.latency_ms
        else:
            delay_ms = max(0.0, cfg.latency_ms + (2.0 * u_jitter - 1.0) * cfg.jitter_ms)
        first_token_ms = ov.first_token_ms if ov.first_token_ms is not None else cfg.first_token_ms
        token_ms = ov.token_ms if ov.token_ms is not None else cfg.token_ms
        return Decision(
            outcome=outcome,
            status=status,
            retry_after=retry_after,
            delay_s=delay_ms / 1000.0,
            first_token_s=first_token_ms / 1000.0,
            token_s=token_ms / 1000.0,
            cut_after=ov.cut_after,
            tool_call=ov.tool_call if ov.tool_call is not None else cfg.tool_call,
            output_tokens=ov.output_tokens if ov.output_tokens is not None else cfg.output_tokens,
            malformed_mode=ov.malformed_mode or cfg.malformed_mode,
        )


_NO_OVERRIDE = Override()


# --- command line -------------------------------------------------------------------------

_CLI_FLOATS = (
    ("latency_ms", "fixed delay before each response, in ms"),
    ("jitter_ms", "uniform +- jitter around --latency-ms, in ms"),
    ("error_rate", "share of requests (0..1) answered with --error-status"),
    ("retry_after", "seconds, sent as Retry-After on 429 and 503 answers"),
    ("hang_rate", "share of requests (0..1) accepted and never answered"),
    ("cut_stream_rate", "share of streams (0..1) cut mid-way without the terminal event"),
    ("malformed_rate", "share of requests (0..1) answered 200 with invalid JSON / SSE data"),
    ("first_token_ms", "streams: delay before the first content delta, in ms"),
    ("token_ms", "streams: delay between content deltas, in ms"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --host/--port and one flag per fault field (shared by manage.py and python -m)."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8090, help="port (default 8090; 0 picks a free one)"
    )
    for name, text in _CLI_FLOATS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=None, help=text)
    parser.add_argument(
        "--error-status",
        type=int,
        default=None,
        help=f"status of injected errors: one of {', '.join(map(str, ERROR_STATUSES))} (500)",
    )
    parser.add_argument(
        "--malformed-mode",
        choices=MALFORMED_MODES,
        default=None,
        help="how --malformed-rate answers are broken: truncated (half a body, no usage) or "
        "invalid_utf8 (a whole answer with its usage, text bytes not UTF-8) (truncated)",
    )
    parser.add_argument(
        "--quota-exhausted",
        action="store_true",
        default=None,
        help="answer every request as out of credit (OpenAI 429 insufficient_quota)",
    )
    parser.add_argument(
        "--tool-call",
        action="store_true",
        default=None,
        help="answer with a tool call when the request declares tools",
    )
    parser.add_argument(
        "--output-tokens", type=int, default=None, help="words in a text reply (16)"
    )
    parser.add_argument("--api-key", default=None, help="require exactly this API key")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible faults")


def config_from_options(options: Mapping[str, Any]) -> FaultConfig:
    """Validate parsed CLI options; errors name the flag (``--error-rate: ...``)."""
    given = {
        name: options[name] for name in FaultConfig.field_names() if options.get(name) is not None
    }
    try:
        return FaultConfig.from_mapping(given)
    except FaultConfigError as exc:
        raise FaultConfigError(f"--{exc.field.replace('_', '-')}", exc.message) from None
