"""``config_apply``: make the database match a config document, all or nothing.

Idempotent: each entity is found by its identity (provider/agent name; deployment name +
provider + upstream model; budget scope + target + window) and only changed fields are written,
so applying the same file twice writes nothing and records no audit event. Every create, update
and delete is audited with before/after values (never secrets).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import yaml
from django.conf import settings
from django.db import models, transaction
from pydantic import ValidationError

from agents.access.services import apikeys_revoke_orphaned_by
from agents.config.pricing import unpriced_errors
from agents.config.schema import (
    AgentSpec,
    BudgetSpec,
    ConfigDocument,
    format_errors,
)
from agents.models import Agent, ApiKey, ModelDeployment, Provider
from agents.schemas import dotted, text_problems
from budgets.models import Budget, BudgetScope, BudgetWindow
from core.audit import audit_record
from core.errors import ValidationFailed
from incidents.models import NotificationChannel
from incidents.notifications import channel_values


class ConfigError(ValidationFailed):
    """The document is invalid; nothing was applied."""


@dataclass
class ApplyResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def summary(self) -> str:
        return (
            f"{len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.deleted)} deleted, {self.unchanged} unchanged"
        )


# Deep enough for any real document (a tool's JSON Schema nests a few levels per level of its
# arguments), shallow enough that PyYAML's recursive composer never nears Python's recursion
# limit: 10,000 levels would otherwise be a RecursionError traceback, not an error message.
MAX_YAML_DEPTH = 100

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses nesting deeper than :data:`MAX_YAML_DEPTH`, as it reads
    (the parser is iterative; only composing and constructing recurse)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {MAX_YAML_DEPTH} levels",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _duplicate_keys(root: yaml.Node) -> list[str]:
    """``path: duplicate key`` for every key repeated in its mapping. YAML requires keys to be
    unique; PyYAML keeps the last one silently, so a pasted block could override a setting
    unnoticed."""
    errors: list[str] = []
    seen: set[int] = set()  # anchors and aliases may share (even cycle through) nodes
    todo: list[tuple[yaml.Node, str]] = [(root, "")]
    while todo:
        node, path = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], yaml.Node] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue
                where = f"{path}.{key.value}" if path else str(key.value)
                if key.tag != _MERGE_TAG:
                    earlier = first.setdefault((key.tag, key.value), key)
                    if earlier is not key:
                        errors.append(
                            f"{where}: duplicate key (first on line {earlier.start_mark.line + 1}"
                            f", again on line {key.start_mark.line + 1})"
                        )
                todo.append((value, where))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
    return sorted(errors, key=lambda line: line.split(": ", 1)[0])


def config_parse(text: str) -> ConfigDocument:
    """YAML text to a validated document, or :class:`ConfigError` listing every problem."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        duplicates = _duplicate_keys(node) if node is not None else []
        if duplicates:
            raise ConfigError(duplicates)
        raw = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}invalid YAML: {problem}"]) from None
    finally:
        loader.dispose()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["document: must be a mapping with providers, models, agents, budgets"])
    # YAML escapes can write NUL and lone surrogates too ("\x00", "\ud800"); the database (and
    # a provider call) could not take them.
    bad_text = [
        f"{dotted(loc) or 'document'}: {'keys ' if in_key else ''}{problem}"
        for loc, problem, in_key in text_problems(raw)
    ]
    if bad_text:
        raise ConfigError(bad_text)
    try:
        return ConfigDocument.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def config_apply(
    *,
    document: ConfigDocument,
    actor: str = "system:apply",
    prune: bool = False,
    dry_run: bool = False,
) -> ApplyResult:
    """Apply ``document`` in one transaction; ``prune`` deletes what the document omits."""
    result = _Applier(actor=actor, prune=prune)
    with transaction.atomic():
        errors = _reference_errors(document, prune=prune)
        if errors:
            raise ConfigError(errors)
        result.run(document)
        # On the database as the document left it (merged with what it does not mention).
        errors = unpriced_errors(document)
        if errors:
            raise ConfigError(errors)  # rolls back everything written above
        if dry_run:
            transaction.set_rollback(True)
    return result.result


# --- reference checks ----------------------------------------------------------------------


def _duplicates(keys: Iterable[Any], path: str) -> list[str]:
    seen: dict[Any, int] = {}
    errors = []
    for index, key in enumerate(keys):
        if key in seen:
            errors.append(f"{path}[{index}]: duplicate of {path}[{seen[key]}]")
        else:
            seen[key] = index
    return errors


def _reference_errors(doc: ConfigDocument, *, prune: bool) -> list[str]:
    errors: list[str] = []
    errors += _duplicates((p.name for p in doc.providers), "providers")
    errors += _duplicates(((m.name, m.provider, m.upstream_model) for m in doc.models), "models")
    errors += _duplicates((a.name for a in doc.agents), "agents")
    errors += _duplicates((n.name for n in doc.notifications), "notifications")

    providers = {p.name for p in doc.providers}
    models_known = {m.name for m in doc.models}
    agents_known = {a.name for a in doc.agents}
    if not prune:
        providers |= set(Provider.objects.values_list("name", flat=True))
        models_known |= set(ModelDeployment.objects.values_list("name", flat=True))
        agents_known |= set(Agent.objects.values_list("name", flat=True))

    for i, model in enumerate(doc.models):
        if model.provider not in providers:
            errors.append(f"models[{i}].provider: unknown provider {model.provider!r}")

    for i, agent in enumerate(doc.agents):
        if agent.model not in models_known:
            errors.append(f"agents[{i}].model: unknown model {agent.model!r}")
        for j, name in enumerate(agent.fallback_models):
            if name not in models_known:
                errors.append(f"agents[{i}].fallback_models[{j}]: unknown model {name!r}")
        if agent.cheap_model is not None and agent.cheap_model not in models_known:
            errors.append(f"agents[{i}].cheap_model: unknown model {agent.cheap_model!r}")
        for j, tool in enumerate(agent.tools):
            if tool.kind == "python" and tool.function not in settings.BREAKWATER_TOOL_ALLOW_LIST:
                errors.append(
                    f"agents[{i}].tools[{j}].function: {tool.function!r} is not in "
                    "BREAKWATER_TOOL_ALLOW_LIST"
                )

    daily_owned = {a.name: i for i, a in enumerate(doc.agents) if a.daily_budget_usd is not None}
    # One budget per (scope, target, window); an entry may hold two windows, so duplicates are
    # reported by entry index, not by position in the flattened window list.
    windows: dict[tuple[str, str | None, str], int] = {}
    for i, budget in enumerate(doc.budgets):
        if budget.scope == "agent":
            if budget.target not in agents_known:
                errors.append(f"budgets[{i}].target: unknown agent {budget.target!r}")
            if budget.daily_limit_usd is not None:
                owner = daily_owned.get(budget.target or "")
                hint = f"agents[{owner}]" if owner is not None else "the agent's entry"
                errors.append(
                    f"budgets[{i}].daily_limit_usd: an agent's daily budget is set by "
                    f"daily_budget_usd in {hint}"
                )
        elif budget.scope == "api_key" and not ApiKey.objects.filter(prefix=budget.target).exists():
            errors.append(f"budgets[{i}].target: unknown API key prefix {budget.target!r}")
        for window in _windows(budget):
            first = windows.setdefault((budget.scope, budget.target, window), i)
            if first != i:
                errors.append(f"budgets[{i}]: duplicate of budgets[{first}] ({window} window)")
    return errors


def _windows(budget: BudgetSpec) -> list[str]:
    out: list[str] = []
    if budget.daily_limit_usd is not None:
        out.append(BudgetWindow.DAILY)
    if budget.monthly_limit_usd is not None:
        out.append(BudgetWindow.MONTHLY)
    return out


# --- writing -------------------------------------------------------------------------------


def _same(current: Any, wanted: Any) -> bool:
    if isinstance(current, Decimal) or isinstance(wanted, Decimal):
        if current is None or wanted is None:
            return current is wanted
        return Decimal(current) == Decimal(wanted)
    return bool(current == wanted)


def agent_values(spec: AgentSpec) -> dict[str, Any]:
    """Column values for an agent spec (the daily budget lives in ``budgets.Budget``)."""
    return {
        "description": spec.description,
        "model": spec.model,
        "fallback_models": list(spec.fallback_models),
        "cheap_model": spec.cheap_model or "",
        "system_prompt": spec.system_prompt,
        "timeout_s": spec.timeout_s,
        "attempt_timeout_s": spec.attempt_timeout_s,
        "max_retries": spec.max_retries,
        "max_tokens": spec.max_tokens,
        "breaker_failure_threshold": spec.breaker.failure_threshold,
        "breaker_recovery_timeout_s": spec.breaker.recovery_timeout_s,
        "breaker_half_open_max_calls": spec.breaker.half_open_max_calls,
        "breaker_window_size": spec.breaker.window_size,
        "breaker_minimum_calls": spec.breaker.minimum_calls,
        "breaker_failure_rate": spec.breaker.failure_rate_threshold,
        "breaker_slow_call_s": spec.breaker.slow_call_s,
        "breaker_slow_call_rate": spec.breaker.slow_call_rate_threshold,
        "rate_limit_rpm": spec.rate_limit.rpm,
        "rate_limit_tpm": spec.rate_limit.tpm,
        "cache_ttl_s": spec.cache_ttl_s,
        "tools": [tool.model_dump(mode="json") for tool in spec.tools],
        "fallback_messages": dict(spec.fallback_messages),
        "slo_availability": spec.slo.availability,
        "slo_latency_ms": spec.slo.latency_ms,
        "slo_latency_quantile": spec.slo.latency_quantile,
        "max_concurrency": spec.max_concurrency,
        "queue": spec.queue,
        "enabled": spec.enabled,
    }


class _Applier:
    def __init__(self, *, actor: str, prune: bool) -> None:
        self.actor = actor
        self.prune = prune
        self.result = ApplyResult()

    def upsert(
        self,
        model: type[models.Model],
        lookup: dict[str, Any],
        values: dict[str, Any],
        label: str,
    ) -> Any:
        obj = model._default_manager.filter(**lookup).first()
        target_type = model._meta.model_name or model.__name__.lower()
        if obj is None:
            obj = model(**lookup, **values)
            obj.save()
            self.result.created.append(label)
            audit_record(
                actor=self.actor,
                action=f"{target_type}_create",
                target_type=target_type,
                target_id=str(obj.pk),
                after=_audit_values(values),
            )
            return obj
        changed = {
            name: value for name, value in values.items() if not _same(getattr(obj, name), value)
        }
        if not changed:
            self.result.unchanged += 1
            return obj
        before = {name: getattr(obj, name) for name in changed}
        for name, value in changed.items():
            setattr(obj, name, value)
        obj.save(update_fields=[*changed, *(["updated_at"] if _has(model, "updated_at") else [])])
        self.result.updated.append(label)
        audit_record(
            actor=self.actor,
            action=f"{target_type}_update",
            target_type=target_type,
            target_id=str(obj.pk),
            before=_audit_values(before),
            after=_audit_values(changed),
        )
        return obj

    def delete(self, obj: models.Model, label: str) -> None:
        target_type = obj._meta.model_name or type(obj).__name__.lower()
        audit_record(
            actor=self.actor,
            action=f"{target_type}_delete",
            target_type=target_type,
            target_id=str(obj.pk),
            before={"label": label},
        )
        obj.delete()
        self.result.deleted.append(label)

    def run(self, doc: ConfigDocument) -> None:
        providers = {}
        for spec in doc.providers:
            values: dict[str, Any] = {
                "kind": spec.kind,
                "base_url": spec.resolved_base_url(),
                "simulation": spec.simulation.model_dump() if spec.simulation else {},
            }
            # A stored (encrypted) secret is kept unless the file names an env var instead;
            # the file never carries a secret, so export | apply leaves it untouched.
            if spec.api_key_env is not None:
                values["api_key_env"] = spec.api_key_env
                values["api_key_encrypted"] = ""
            else:
                values["api_key_env"] = ""
            providers[spec.name] = self.upsert(
                Provider, {"name": spec.name}, values, f"provider {spec.name}"
            )

        kept_deployments = set()
        for model_spec in doc.models:
            provider = providers.get(model_spec.provider) or Provider.objects.get(
                name=model_spec.provider
            )
            deployment = self.upsert(
                ModelDeployment,
                {
                    "name": model_spec.name,
                    "provider": provider,
                    "upstream_model": model_spec.upstream_model,
                },
                {
                    "input_usd_per_mtok": model_spec.input_usd_per_mtok,
                    "output_usd_per_mtok": model_spec.output_usd_per_mtok,
                    "cached_input_usd_per_mtok": model_spec.cached_input_usd_per_mtok,
                    "max_concurrency": model_spec.max_concurrency,
                    "weight": model_spec.weight,
                    "enabled": model_spec.enabled,
                },
                f"model {model_spec.name} ({model_spec.provider}/{model_spec.upstream_model})",
            )
            kept_deployments.add(deployment.pk)

        agents = {}
        for agent_spec in doc.agents:
            agent = self.upsert(
                Agent,
                {"name": agent_spec.name},
                agent_values(agent_spec),
                f"agent {agent_spec.name}",
            )
            agents[agent.name] = agent
            lookup = {"scope": BudgetScope.AGENT, "agent": agent, "window": BudgetWindow.DAILY}
            if agent_spec.daily_budget_usd is not None:
                self.upsert(
                    Budget,
                    lookup,
                    {"limit_usd": agent_spec.daily_budget_usd},
                    f"budget agent:{agent.name} daily",
                )
            else:
                existing = Budget.objects.filter(**lookup).first()
                if existing is not None:
                    self.delete(existing, f"budget agent:{agent.name} daily")

        kept_budgets = {
            pk
            for pk in Budget.objects.filter(
                scope=BudgetScope.AGENT, window=BudgetWindow.DAILY, agent__in=agents.values()
            ).values_list("pk", flat=True)
        }
        for budget_spec in doc.budgets:
            target: dict[str, Any] = {}
            if budget_spec.scope == "agent":
                target["agent"] = agents.get(budget_spec.target or "") or Agent.objects.get(
                    name=budget_spec.target
                )
            elif budget_spec.scope == "api_key":
                target["api_key"] = ApiKey.objects.get(prefix=budget_spec.target)
            for window in _windows(budget_spec):
                limit = (
                    budget_spec.daily_limit_usd
                    if window == BudgetWindow.DAILY
                    else budget_spec.monthly_limit_usd
                )
                budget = self.upsert(
                    Budget,
                    {"scope": budget_spec.scope, "window": window, **target},
                    {
                        "limit_usd": limit,
                        "timezone": budget_spec.timezone,
                        "warn_at_pct": budget_spec.warn_at_pct,
                        "alert_at_pct": budget_spec.alert_at_pct,
                    },
                    f"budget {budget_spec.scope}:{budget_spec.target or '*'} {window}",
                )
                kept_budgets.add(budget.pk)

        for channel_spec in doc.notifications:
            self.upsert(
                NotificationChannel,
                {"name": channel_spec.name},
                channel_values(channel_spec),
                f"notification channel {channel_spec.name}",
            )

        if self.prune:
            names = [channel.name for channel in doc.notifications]
            for channel in NotificationChannel.objects.exclude(name__in=names):
                self.delete(channel, f"notification channel {channel.name}")
            for budget in Budget.objects.exclude(pk__in=kept_budgets).select_related("agent"):
                self.delete(budget, f"budget {budget.scope}:{budget.target} {budget.window}")
            for agent in Agent.objects.exclude(name__in=agents):
                # A key restricted to this agent alone would be widened to every agent: the
                # file dropped the agent, so the key goes too (revoked and audited), not refused.
                apikeys_revoke_orphaned_by(agent=agent, actor=self.actor)
                self.delete(agent, f"agent {agent.name}")
            for deployment in ModelDeployment.objects.exclude(pk__in=kept_deployments):
                self.delete(deployment, f"model {deployment.name}")
            for provider in Provider.objects.exclude(name__in=providers):
                self.delete(provider, f"provider {provider.name}")


def _has(model: type[models.Model], name: str) -> bool:
    return any(f.name == name for f in model._meta.get_fields())


def _audit_values(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in values.items():
        if name == "api_key_encrypted":
            continue  # never audit secrets, even encrypted
        out[name] = getattr(value, "pk", value) if isinstance(value, models.Model) else value
    return out
