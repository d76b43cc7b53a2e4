"""Shape, type and range checks of the config-as-code document, with the exact messages users see.

These run without a database: :func:`config_parse` must never touch it (pytest-django would
refuse the query). Cross-entry references are checked at apply time (``test_apply.py``).
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import yaml

from agents.config.apply import ConfigError, config_parse
from agents.config.schema import INT32_MAX, ConfigDocument


class _Delete:
    """Marks a field to remove; a stable repr keeps test ids the same across processes."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set ``agents[2].breaker.failure_threshold``-style ``path`` in ``doc`` (DELETE removes)."""
    tokens: list[str | int] = []
    for part in path.split("."):
        name, *indexes = re.split(r"\[(\d+)\]", part)
        if name:
            tokens.append(name)
        tokens.extend(int(index) for index in indexes if index)
    node: Any = doc
    for token in tokens[:-1]:
        if isinstance(token, str) and token not in node:
            node[token] = {}
        node = node[token]
    if value is DELETE:
        del node[tokens[-1]]
    else:
        node[tokens[-1]] = value


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_parse(text)
    return caught.value.errors


def _mutated(demo_yaml: str, *changes: tuple[str, Any]) -> str:
    doc = yaml.safe_load(demo_yaml)
    for path, value in changes:
        _set(doc, path, value)
    return yaml.safe_dump(doc, sort_keys=False)


def test_the_demo_document_is_valid(demo_yaml: str) -> None:
    doc = config_parse(demo_yaml)

    assert [p.name for p in doc.providers][:2] == ["sim-support", "sim-support-b"]
    assert (len(doc.providers), len(doc.models), len(doc.agents), len(doc.budgets)) == (
        6,
        6,
        10,
        1,
    )
    assert doc.agents[0].breaker.failure_threshold == 5
    assert doc.budgets[0].scope == "global"


def test_an_empty_document_is_an_empty_config() -> None:
    assert config_parse("") == ConfigDocument()
    assert config_parse("# nothing here\n") == ConfigDocument()


def test_defaults_fill_what_an_agent_leaves_out() -> None:
    doc = config_parse("agents: [{name: bare, model: m}]")

    agent = doc.agents[0]
    assert (agent.timeout_s, agent.max_retries, agent.max_tokens, agent.cache_ttl_s) == (
        30,
        3,
        1024,
        0,
    )
    assert agent.attempt_timeout_s is None  # derived from the deadline and the chain
    assert (agent.breaker.failure_threshold, agent.breaker.recovery_timeout_s) == (5, 60)
    assert agent.fallback_models == []
    assert agent.daily_budget_usd is None
    assert agent.enabled
    # docs/INTERFACES.md §2: 99.9% available, 95% of requests within 2 s
    assert agent.slo.model_dump() == {
        "availability": 0.999,
        "latency_ms": 2000,
        "latency_quantile": 0.95,
    }
    assert agent.queue == "default"  # the deployment's execution queue
    assert agent.max_concurrency is None  # no bulkhead in serve


MUTATIONS: list[tuple[str, Any, str]] = [
    # ranges, with the example of docs/INTERFACES.md §2
    ("agents[2].breaker.failure_threshold", 0, "agents[2].breaker.failure_threshold: must be >= 1"),
    ("agents[0].breaker.recovery_timeout_s", 0, "agents[0].breaker.recovery_timeout_s: must be >= 0.1"),
    ("agents[0].breaker.half_open_max_calls", 0, "agents[0].breaker.half_open_max_calls: must be >= 1"),
    ("agents[0].breaker.failure_rate_threshold", 1.5, "agents[0].breaker.failure_rate_threshold: must be <= 1"),
    ("agents[0].breaker.slow_call_s", float("nan"), "agents[0].breaker.slow_call_s: must be a finite number"),
    ("agents[0].breaker.minimum_calls", 50, "agents[0].breaker.minimum_calls: must be <= window_size"),
    ("agents[0].max_retries", 11, "agents[0].max_retries: must be <= 10"),
    ("agents[0].max_retries", -1, "agents[0].max_retries: must be >= 0"),
    ("agents[0].max_retries", 1.5, "agents[0].max_retries: must be an integer"),
    ("agents[0].max_tokens", 0, "agents[0].max_tokens: must be >= 1"),
    ("agents[0].cache_ttl_s", -1, "agents[0].cache_ttl_s: must be >= 0"),
    ("agents[0].slo.availability", 1, "agents[0].slo.availability: must be <= 0.99999"),
    ("agents[0].slo.availability", 0, "agents[0].slo.availability: must be >= 0.5"),
    ("agents[0].slo.availability", 99.9, "agents[0].slo.availability: must be <= 0.99999"),
    ("agents[0].slo.availability", float("nan"), "agents[0].slo.availability: must be a finite number"),
    ("agents[0].slo.availability", "0.999", "agents[0].slo.availability: must be a number"),
    ("agents[0].slo.latency_ms", 0, "agents[0].slo.latency_ms: must be >= 1"),
    ("agents[0].slo.latency_ms", 3_600_001, "agents[0].slo.latency_ms: must be <= 3600000"),
    ("agents[0].slo.latency_ms", 1500.5, "agents[0].slo.latency_ms: must be an integer"),
    ("agents[0].slo.latency_quantile", 1.0, "agents[0].slo.latency_quantile: must be <= 0.99999"),
    ("agents[0].slo.latency_quantile", 0.2, "agents[0].slo.latency_quantile: must be >= 0.5"),
    ("agents[0].slo.p99_ms", 100, "agents[0].slo.p99_ms: unknown field"),
    ("agents[0].slo", 0.999, "agents[0].slo: must be a mapping"),
    # queue: a Celery queue name (a Redis key and an item of `-Q a,b`), not one Celery keeps
    ("agents[0].queue", "heavy pool", "agents[0].queue: 'heavy pool' must be a Celery queue name: 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit (no spaces, commas or colons) (agent customer-support)"),
    ("agents[2].queue", "heavy,light", "agents[2].queue: 'heavy,light' must be a Celery queue name: 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit (no spaces, commas or colons) (agent data-analyst)"),
    ("agents[0].queue", "bw:heavy", "agents[0].queue: 'bw:heavy' must be a Celery queue name: 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit (no spaces, commas or colons) (agent customer-support)"),
    ("agents[0].queue", "", "agents[0].queue: '' must be a Celery queue name: 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit (no spaces, commas or colons) (agent customer-support)"),
    ("agents[0].queue", "q" * 65, f"agents[0].queue: '{'q' * 65}' must be a Celery queue name: 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit (no spaces, commas or colons) (agent customer-support)"),
    ("agents[0].queue", "unacked", "agents[0].queue: 'unacked' is a name Celery's Redis transport uses for its own keys; choose another (agent customer-support)"),
    ("agents[0].queue", "worker1.celery.pidbox", "agents[0].queue: 'worker1.celery.pidbox' is a name Celery's Redis transport uses for its own keys; choose another (agent customer-support)"),
    ("agents[0].queue", "celeryev.x", "agents[0].queue: 'celeryev.x' is a name Celery's Redis transport uses for its own keys; choose another (agent customer-support)"),
    ("agents[0].queue", 7, "agents[0].queue: must be a string"),
    ("agents[0].max_concurrency", 0, "agents[0].max_concurrency: must be >= 1"),
    ("agents[0].max_concurrency", 100_001, "agents[0].max_concurrency: must be <= 100000"),
    ("agents[0].max_concurrency", 2.5, "agents[0].max_concurrency: must be an integer"),
    ("agents[0].rate_limit.rpm", 0, "agents[0].rate_limit.rpm: must be >= 1"),
    # A PositiveIntegerField is 32-bit on PostgreSQL: the schema must stop what the column would.
    ("agents[0].rate_limit.tpm", INT32_MAX + 1, f"agents[0].rate_limit.tpm: must be <= {INT32_MAX}"),
    # timeout_s: zero, negative, too large, not finite
    ("agents[0].timeout_s", 0, "agents[0].timeout_s: must be >= 0.1"),
    ("agents[0].timeout_s", -5, "agents[0].timeout_s: must be >= 0.1"),
    ("agents[0].timeout_s", 3601, "agents[0].timeout_s: must be <= 3600"),
    ("agents[0].timeout_s", math.inf, "agents[0].timeout_s: must be a finite number"),
    ("agents[0].timeout_s", math.nan, "agents[0].timeout_s: must be a finite number"),
    # attempt_timeout_s: a sane minimum, a number, finite, within the deadline
    ("agents[0].attempt_timeout_s", 0.05, "agents[0].attempt_timeout_s: must be >= 0.1"),
    ("agents[0].attempt_timeout_s", 1e-300, "agents[0].attempt_timeout_s: must be >= 0.1"),
    ("agents[0].attempt_timeout_s", True, "agents[0].attempt_timeout_s: must be a number"),
    ("agents[0].attempt_timeout_s", "4", "agents[0].attempt_timeout_s: must be a number"),
    ("agents[0].attempt_timeout_s", math.nan, "agents[0].attempt_timeout_s: must be a finite number"),
    ("agents[0].attempt_timeout_s", 3601, "agents[0].attempt_timeout_s: must be <= 3600"),
    ("agents[0].attempt_timeout_s", 10.5, "agents[0].attempt_timeout_s: must be <= timeout_s (10), got 10.5"),
    # money and prices: NaN, infinities, negatives, too large, too precise
    ("models[0].input_usd_per_mtok", math.nan, "models[0].input_usd_per_mtok: must be a finite number"),
    ("models[0].input_usd_per_mtok", math.inf, "models[0].input_usd_per_mtok: must be a finite number"),
    ("models[3].output_usd_per_mtok", -math.inf, "models[3].output_usd_per_mtok: must be a finite number"),
    ("models[0].input_usd_per_mtok", -0.01, "models[0].input_usd_per_mtok: must be >= 0"),
    ("models[0].output_usd_per_mtok", 100_001, "models[0].output_usd_per_mtok: must be <= 100000"),
    ("models[0].input_usd_per_mtok", 0.0000001, "models[0].input_usd_per_mtok: must have at most 6 decimal places"),
    ("models[0].input_usd_per_mtok", "cheap", "models[0].input_usd_per_mtok: must be a number"),
    ("agents[0].daily_budget_usd", math.nan, "agents[0].daily_budget_usd: must be a finite number"),
    ("agents[0].daily_budget_usd", math.inf, "agents[0].daily_budget_usd: must be a finite number"),
    ("agents[0].daily_budget_usd", -1, "agents[0].daily_budget_usd: must be >= 0"),
    # The money columns hold 8 integer digits: 10^8 itself overflows them on PostgreSQL.
    ("agents[0].daily_budget_usd", 100_000_000, "agents[0].daily_budget_usd: must be < 100000000"),
    ("budgets[0].monthly_limit_usd", 1e12, "budgets[0].monthly_limit_usd: must be < 100000000"),
    ("budgets[0].daily_limit_usd", -5, "budgets[0].daily_limit_usd: must be >= 0"),
    ("budgets[0].monthly_limit_usd", math.inf, "budgets[0].monthly_limit_usd: must be a finite number"),
    ("models[0].max_concurrency", 0, "models[0].max_concurrency: must be >= 1"),
    ("models[0].weight", 1001, "models[0].weight: must be <= 1000"),
    # unknown and missing fields
    ("agents[0].colour", "red", "agents[0].colour: unknown field"),
    ("providers[1].region", "eu", "providers[1].region: unknown field"),
    ("agents[3].breaker.threshold", 3, "agents[3].breaker.threshold: unknown field"),
    ("agent", [], "agent: unknown field"),
    ("agents[0].model", DELETE, "agents[0].model: is required"),
    ("models[2].upstream_model", "", "models[2].upstream_model: must not be empty"),
    # names
    ("agents[0].name", "Customer Support", "agents[0].name: invalid format (must match ^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$)"),
    ("agents", {"name": "x"}, "agents: must be a list"),
    ("agents[0].fallback_models", "claude-3-5-haiku", "agents[0].fallback_models: must be a list"),
    # the fallback chain
    ("agents[0].fallback_models", ["claude-3-5-haiku", "gpt-4o-mini"], "agents[0].fallback_models: must not contain the agent's own model"),
    ("agents[0].fallback_models", ["gpt-4o", "claude-3-5-haiku", "gpt-4o"], "agents[0].fallback_models: must not repeat a model (a cycle)"),
    ("agents[2].cheap_model", "gpt-4o", "agents[2].cheap_model: must differ from model"),
    ("agents[0].fallback_messages", {"timeout": "Later.", "rude": "Go away."}, "agents[0].fallback_messages: unknown kind 'rude'; expected one of budget, llm_error, rate_limit, timeout, tool_error, unavailable"),
    ("agents[0].fallback_messages", {"timeout": ""}, "agents[0].fallback_messages.timeout: must not be empty"),
    # tools
    ("agents[0].tools", [{"name": "lookup", "kind": "python"}], "agents[0].tools[0]: a python tool needs `function` (module:callable) and no `url`"),
    ("agents[0].tools", [{"name": "hook", "kind": "webhook", "url": "https://hooks.example/x", "parameters": {"type": "array"}}], "agents[0].tools[0].parameters: must be a JSON schema of type object"),
    ("agents[0].tools", [{"name": "hook", "kind": "webhook", "url": "https://hooks.example/x", "parameters": {"type": "object", "properties": {"city": {"type": "text"}}}}], "agents[0].tools[0].parameters.properties.city.type: must be one of array, boolean, integer, null, number, object, string (or a list of them)"),
    ("agents[0].tools", [{"name": "hook", "kind": "webhook", "url": "https://hooks.example/x", "parameters": {"type": "object", "properties": {"code": {"pattern": "(["}}}}], 'agents[0].tools[0].parameters.properties.code.pattern: "([" is not a valid regex'),
    ("agents[0].tools", [{"name": "hook", "kind": "webhook", "url": "https://hooks.example/x", "parameters": {"type": "object", "anyOf": [{"required": "a"}]}}], "agents[0].tools[0].parameters.anyOf[0].required: expected array, got string"),
    # providers
    ("providers[0].kind", "gemini", "providers[0].kind: must be one of 'openai', 'anthropic' or 'simulated'"),
    ("providers[0].simulation", {"latency_ms": 5}, "providers[0].simulation: only allowed for kind simulated"),
    ("providers[0].base_url", "ftp://files.example.com", "providers[0].base_url: must be an http(s) URL with a host"),
    ("providers[0].base_url", "api.openai.com/v1", "providers[0].base_url: must be an http(s) URL with a host"),
    ("providers[0].base_url", "https://", "providers[0].base_url: must be an http(s) URL with a host"),
    # Provider.base_url is a varchar(500): longer would pass SQLite and fail on PostgreSQL.
    ("providers[0].base_url", "https://llm.example.com/" + "v" * 500, "providers[0].base_url: must be at most 500 characters"),
    ("providers[0].api_key_env", "openai_api_key", "providers[0].api_key_env: invalid format (must match ^[A-Z_][A-Z0-9_]{0,127}$)"),
    ("providers[0].api_key_env", "1KEY", "providers[0].api_key_env: invalid format (must match ^[A-Z_][A-Z0-9_]{0,127}$)"),
    ("providers[0].simulation.error_rate", 1.5, "providers[0].simulation.error_rate: must be <= 1"),
    # cloud metadata addresses, however they are written (loopback and private stay allowed)
    ("providers[1].base_url", "http://169.254.169.254/latest", "providers[1].base_url: 169.254.169.254 is link-local, where cloud metadata services live; refused unless the host is in BREAKWATER_PROVIDER_ALLOW_HOSTS"),
    ("providers[1].base_url", "http://169.254.0.1:8080/v1", "providers[1].base_url: 169.254.0.1 is link-local, where cloud metadata services live; refused unless the host is in BREAKWATER_PROVIDER_ALLOW_HOSTS"),
    ("providers[1].base_url", "http://2852039166/v1", "providers[1].base_url: 169.254.169.254 is link-local, where cloud metadata services live; refused unless the host is in BREAKWATER_PROVIDER_ALLOW_HOSTS"),
    ("providers[1].base_url", "http://0xa9.0xfe.0xa9.0xfe/v1", "providers[1].base_url: 169.254.169.254 is link-local, where cloud metadata services live; refused unless the host is in BREAKWATER_PROVIDER_ALLOW_HOSTS"),
    ("providers[1].base_url", "http://[fd00:ec2::254]/v1", "providers[1].base_url: fd00:ec2::254 is a cloud metadata address; refused unless the host is in BREAKWATER_PROVIDER_ALLOW_HOSTS"),
    ("providers[1].base_url", "http://[fe80::a9fe:a9fe]/v1", "providers[1].base_url: fe80::a9fe:a9fe is link-local, where cloud metadata services live; refused unless the host is in BREAKWATER_PROVIDER_ALLOW_HOSTS"),
    ("providers[1].base_url", "http://[::ffff:169.254.169.254]/v1", "providers[1].base_url: ::ffff:a9fe:a9fe is link-local, where cloud metadata services live (it carries 169.254.169.254); refused unless the host is in BREAKWATER_PROVIDER_ALLOW_HOSTS"),
    # budgets
    ("budgets[0].target", "customer-support", "budgets[0].target: not allowed for a global budget"),
    ("budgets[0]", {"scope": "agent", "monthly_limit_usd": 5}, "budgets[0].target: required for scope agent"),
    ("budgets[0]", {"scope": "global"}, "budgets[0]: set daily_limit_usd, monthly_limit_usd or both"),
    ("budgets[0]", {"scope": "team", "daily_limit_usd": 5}, "budgets[0].scope: must be one of 'global', 'agent' or 'api_key'"),
    ("budgets[0].warn_at_pct", 80, "budgets[0].warn_at_pct: must be below alert_at_pct"),
    ("budgets[0].warn_at_pct", 95, "budgets[0].warn_at_pct: must be below alert_at_pct"),
    ("budgets[0].alert_at_pct", 101, "budgets[0].alert_at_pct: must be <= 100"),
    ("budgets[0].timezone", "Mars/Olympus_Mons", "budgets[0].timezone: unknown time zone 'Mars/Olympus_Mons'"),
    # sane minimums: a positive number as small as 1e-300 is no duration at all
    ("agents[0].timeout_s", 1e-300, "agents[0].timeout_s: must be >= 0.1"),
    ("agents[0].timeout_s", 0.09, "agents[0].timeout_s: must be >= 0.1"),
    ("agents[0].breaker.recovery_timeout_s", 1e-300, "agents[0].breaker.recovery_timeout_s: must be >= 0.1"),
    ("agents[0].breaker.slow_call_s", 1e-300, "agents[0].breaker.slow_call_s: must be >= 0.01"),
    ("agents[0].breaker.failure_rate_threshold", 1e-300, "agents[0].breaker.failure_rate_threshold: must be >= 0.001"),
    ("agents[0].breaker.slow_call_rate_threshold", 0.0001, "agents[0].breaker.slow_call_rate_threshold: must be >= 0.001"),
    ("agents[0].tools", [{"name": "t", "kind": "webhook", "url": "https://hooks.example/x", "timeout_s": 1e-300}], "agents[0].tools[0].timeout_s: must be >= 0.01"),
    # bools are not ints (nor numbers), strings are not numbers or flags: nothing is coerced
    ("agents[0].max_tokens", True, "agents[0].max_tokens: must be an integer"),
    ("agents[0].max_tokens", "10", "agents[0].max_tokens: must be an integer"),
    ("agents[0].max_tokens", 10.0, "agents[0].max_tokens: must be an integer"),
    ("agents[0].max_retries", False, "agents[0].max_retries: must be an integer"),
    ("agents[0].cache_ttl_s", True, "agents[0].cache_ttl_s: must be an integer"),
    ("agents[0].breaker.failure_threshold", True, "agents[0].breaker.failure_threshold: must be an integer"),
    ("agents[0].rate_limit.rpm", True, "agents[0].rate_limit.rpm: must be an integer"),
    ("agents[0].timeout_s", True, "agents[0].timeout_s: must be a number"),
    ("agents[0].timeout_s", "10", "agents[0].timeout_s: must be a number"),
    ("agents[0].enabled", "yes", "agents[0].enabled: must be true or false"),
    ("agents[0].enabled", 1, "agents[0].enabled: must be true or false"),
    ("agents[0].daily_budget_usd", True, "agents[0].daily_budget_usd: must be a number"),
    ("models[0].weight", True, "models[0].weight: must be an integer"),
    ("models[0].input_usd_per_mtok", True, "models[0].input_usd_per_mtok: must be a number"),
    ("budgets[0].warn_at_pct", True, "budgets[0].warn_at_pct: must be an integer"),
    ("providers[0].simulation.seed", True, "providers[0].simulation.seed: must be an integer"),
]  # fmt: skip


def test_numbers_stay_numbers_where_they_are_valid() -> None:
    """Strict types refuse coercions, not valid values: ints where a float goes, money as a
    float, an int or a string."""
    doc = config_parse(
        "models: [{name: m, provider: p, upstream_model: u, input_usd_per_mtok: '0.15', "
        "output_usd_per_mtok: 1}]\n"
        "agents: [{name: a, model: m, timeout_s: 10, max_tokens: 512, daily_budget_usd: 2.5, "
        "breaker: {recovery_timeout_s: 0.1, failure_rate_threshold: 1}}]"
    )
    agent = doc.agents[0]
    assert (agent.timeout_s, agent.max_tokens, str(agent.daily_budget_usd)) == (10.0, 512, "2.5")
    assert str(doc.models[0].input_usd_per_mtok) == "0.15"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    MUTATIONS,
    ids=[f"{path}={value!r}" for path, value, _ in MUTATIONS],
)
def test_each_invalid_value_is_reported_with_its_path(
    demo_yaml: str, path: str, value: Any, expected: str
) -> None:
    assert _errors(_mutated(demo_yaml, (path, value))) == [expected]


RAW: list[tuple[str, list[str]]] = [
    ("agents: [{name: a, model: m}\n  - x\n", ["line 2, column 3: invalid YAML: expected ',' or ']', but got '-'"]),
    ("agents:\n  - name: a\n   model: m\n", ["line 3, column 4: invalid YAML: expected <block end>, but found '<block mapping start>'"]),
    ("agents: [unclosed", ["line 1, column 18: invalid YAML: expected ',' or ']', but got '<stream end>'"]),
    ("- providers\n- agents\n", ["document: must be a mapping with providers, models, agents, budgets"]),
    ("just some text\n", ["document: must be a mapping with providers, models, agents, budgets"]),
    ("42\n", ["document: must be a mapping with providers, models, agents, budgets"]),
    # YAML's own spellings of the non-finite numbers
    ("models: [{name: m, provider: p, upstream_model: u, input_usd_per_mtok: .inf, output_usd_per_mtok: .NaN}]",
     ["models[0].input_usd_per_mtok: must be a finite number", "models[0].output_usd_per_mtok: must be a finite number"]),
    ("agents: [{name: a, model: m, timeout_s: -.inf}]", ["agents[0].timeout_s: must be a finite number"]),
    ("agents: [{name: a, model: m, daily_budget_usd: 1e400}]", ["agents[0].daily_budget_usd: must be < 100000000"]),
    ("agents: [{name: a, model: m, null: 1}]", ["agents[0].None: keys must be strings"]),
    # text the database cannot store, written with YAML escapes
    ('agents: [{name: a, model: m, system_prompt: "x\\ud800"}]',
     ["agents[0].system_prompt: must not contain a lone surrogate (\\ud800-\\udfff): text must be valid Unicode"]),
    ('agents: [{name: a, model: m, description: "\\x00"}]',
     ["agents[0].description: must not contain the NUL character (\\u0000)"]),
    # duplicate keys: YAML says a key is unique in its mapping; PyYAML would keep the last
    ("agents:\n  - name: a\n    model: m\n    timeout_s: 5\n    timeout_s: 50\n",
     ["agents[0].timeout_s: duplicate key (first on line 4, again on line 5)"]),
    ("agents: [{name: a, model: m}]\nbudgets: []\nagents: []\n",
     ["agents: duplicate key (first on line 1, again on line 3)"]),
    ("agents:\n  - {name: a, model: m, breaker: {failure_threshold: 1, failure_threshold: 2}}\n"
     "  - {name: b, model: m, name: c}\n",
     ["agents[0].breaker.failure_threshold: duplicate key (first on line 2, again on line 2)",
      "agents[1].name: duplicate key (first on line 3, again on line 3)"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), RAW, ids=[text[:40] for text, _ in RAW])
def test_each_malformed_document_is_reported(text: str, expected: list[str]) -> None:
    assert _errors(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "agents: " + "[" * 10_000 + "]" * 10_000,
        "agents: " + "{a: " * 10_000 + "1" + "}" * 10_000,
        "agents:\n" + "".join("  " * depth + "- k:\n" for depth in range(1, 10_000)),
    ],
    ids=["flow lists", "flow mappings", "block style"],
)
def test_a_document_nested_10000_deep_is_an_error_naming_the_problem(text: str) -> None:
    (error,) = _errors(text)
    assert error.endswith("invalid YAML: nested deeper than 100 levels")
    assert error.startswith("line ")


def test_nesting_up_to_the_limit_is_read() -> None:
    parameters = "{type: object, properties: {a: " * 40 + "{}" + "}}" * 40
    doc = config_parse(
        "agents: [{name: a, model: m, tools: [{name: t, kind: webhook, "
        f"url: 'https://hooks.example/x', parameters: {parameters}}}]}}]"
    )
    assert doc.agents[0].tools[0].parameters["type"] == "object"


def test_anchors_and_aliases_still_work() -> None:
    doc = config_parse(
        "agents:\n  - &base {name: a, model: m, breaker: {failure_threshold: 2}}\n"
        "  - {<<: *base, name: b}\n"
    )
    assert [(a.name, a.breaker.failure_threshold) for a in doc.agents] == [("a", 2), ("b", 2)]


def test_every_error_in_a_document_is_reported_in_document_order(demo_yaml: str) -> None:
    text = _mutated(
        demo_yaml,
        ("budgets[0].daily_limit_usd", math.nan),
        ("providers[2].kind", "gemini"),
        ("agents[2].breaker.failure_threshold", 0),
        ("agents[7].colour", "blue"),
        ("models[4].input_usd_per_mtok", -1),
    )

    assert _errors(text) == [
        "providers[2].kind: must be one of 'openai', 'anthropic' or 'simulated'",
        "models[4].input_usd_per_mtok: must be >= 0",
        "agents[2].breaker.failure_threshold: must be >= 1",
        "agents[7].colour: unknown field",
        "budgets[0].daily_limit_usd: must be a finite number",
    ]


def test_the_error_message_joins_every_line() -> None:
    with pytest.raises(ConfigError) as caught:
        config_parse("agents: [{name: a, model: m, timeout_s: 0, colour: red}]")

    assert caught.value.status == 422
    assert (
        caught.value.message
        == "agents[0].timeout_s: must be >= 0.1; agents[0].colour: unknown field"
    )


def test_a_provider_without_base_url_gets_its_kinds_default() -> None:
    doc = config_parse(
        "providers: [{name: o, kind: openai}, {name: a, kind: anthropic}, {name: s, kind: simulated}]"
    )

    assert [p.resolved_base_url() for p in doc.providers] == [
        "https://api.openai.com/v1",
        "https://api.anthropic.com",
        "",
    ]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/v1",  # fakellm
        "http://[::1]:9000/v1",
        "http://10.0.3.7/v1",  # in-cluster providers
        "http://192.168.1.20:8000/v1",
        "http://[fd00::17]/v1",
        "http://llm.svc.cluster.local/v1",  # a name: checked when it is resolved
        "https://api.openai.com/v1",
    ],
)
def test_loopback_private_and_public_base_urls_are_allowed(url: str) -> None:
    doc = config_parse(f"providers: [{{name: o, kind: openai, base_url: '{url}'}}]")

    assert doc.providers[0].base_url == url


def test_a_metadata_host_in_the_allow_list_is_allowed(settings: Any) -> None:
    settings.BREAKWATER_PROVIDER_ALLOW_HOSTS = ["169.254.10.1", "FD00:EC2::254"]
    doc = config_parse(
        "providers: [{name: a, kind: openai, base_url: 'http://169.254.10.1/v1'},"
        " {name: b, kind: openai, base_url: 'http://[fd00:ec2::254]/v1'}]"
    )

    assert [p.base_url for p in doc.providers] == [
        "http://169.254.10.1/v1",
        "http://[fd00:ec2::254]/v1",
    ]
    with pytest.raises(ConfigError):
        config_parse("providers: [{name: a, kind: openai, base_url: 'http://169.254.10.2/v1'}]")


def test_a_trailing_slash_on_base_url_is_dropped() -> None:
    doc = config_parse(
        "providers: [{name: o, kind: openai, base_url: 'http://127.0.0.1:9000/v1/'}]"
    )

    assert doc.providers[0].base_url == "http://127.0.0.1:9000/v1"


def test_the_largest_accepted_values_parse(demo_yaml: str) -> None:
    text = _mutated(
        demo_yaml,
        ("agents[0].timeout_s", 3600),
        ("agents[0].rate_limit.tpm", INT32_MAX),
        ("agents[0].daily_budget_usd", 99_999_999.999999),
        ("models[0].input_usd_per_mtok", 100_000),
        (
            "providers[0]",
            {"name": "sim-support", "kind": "simulated", "simulation": {"error_rate": 1}},
        ),
    )

    doc = config_parse(text)
    assert doc.agents[0].rate_limit.tpm == INT32_MAX
    assert doc.agents[0].timeout_s == 3600


@pytest.mark.parametrize("name", ["heavy", "Heavy.Pool_2-a", "celery", "q" * 64, "0"])
def test_a_celery_queue_name_is_accepted_as_an_agents_queue(name: str) -> None:
    assert config_parse(f"agents: [{{name: a, model: m, queue: '{name}'}}]").agents[0].queue == name
