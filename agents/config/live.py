"""Configuration the hot path reads from memory, reloaded when it changes.

Every write to providers, deployments, agents, budgets or API keys bumps
``console.ConfigVersion`` in the same transaction (signals below catch the admin, ``apply`` and
the API alike). Each serving process polls that one row about once a second and rebuilds an
immutable :class:`Snapshot` when the version moved, so a change (a revoked key included) is in
force everywhere within ~1 s, and no request ever waits on the database for configuration.

One bad object does not freeze the reloads. A provider whose stored API key cannot be decrypted
(``BREAKWATER_ENCRYPTION_KEYS`` unset, or without the key that encrypted it) is left out with its
deployments, an incident is opened for it (resolved once it decrypts again), and the agents left
without a usable model answer a 503 naming it (:meth:`LiveConfig.unavailable`); an agent whose
row cannot be read is refused the same way; everything else loads. Should the build fail anyway,
the keys are still reloaded on their own, so a revocation is never held up by anything else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from agents.access.crypto import SecretUnavailable, decrypt_secret
from agents.models import DEFAULT_QUEUE, Agent, ApiKey, ModelDeployment, Provider
from agents.runtime.state import BreakerConfig
from agents.runtime.types import (
    AgentConfig,
    BudgetRule,
    Deployment,
    ProviderConfig,
    RateLimits,
    ToolSpec,
)
from budgets.models import Budget
from budgets.rules import budget_rule
from core.errors import ApplicationError
from core.models import ConfigVersion

log = logging.getLogger("breakwater.config")


# --- version -----------------------------------------------------------------------------


def config_version_bump() -> None:
    """Bump the config version inside the caller's transaction."""
    updated = ConfigVersion.objects.filter(pk=1).update(
        version=F("version") + 1, changed_at=timezone.now()
    )
    if not updated:
        ConfigVersion.objects.get_or_create(pk=1, defaults={"version": 1})


def config_version_current() -> int:
    row = ConfigVersion.objects.filter(pk=1).values_list("version", flat=True).first()
    return int(row or 0)


# --- snapshot ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    id: int
    prefix: str
    secret_hash: str
    scopes: frozenset[str]
    agents: frozenset[str]  # empty = every agent
    expires_at: datetime | None
    limits: RateLimits = field(default_factory=RateLimits)


class AgentUnavailable(ApplicationError):
    """The agent exists but cannot run with the configuration this process could load (its
    providers' stored keys cannot be decrypted, its row cannot be read): 503, saying why."""

    status = 503
    type = "agent_unavailable"


class ProviderUnusable(Exception):
    """A provider this process cannot call (its stored API key does not decrypt)."""


@dataclass(frozen=True)
class Snapshot:
    version: int = -1
    agents: dict[str, AgentConfig] = field(default_factory=dict)
    # agent name -> why it cannot run (named in its 503); provider name -> what is wrong with it.
    unavailable: dict[str, str] = field(default_factory=dict)
    broken_providers: dict[str, str] = field(default_factory=dict)
    deployments: dict[str, tuple[Deployment, ...]] = field(default_factory=dict)
    deployments_by_id: dict[int, Deployment] = field(default_factory=dict)
    keys: dict[str, KeyInfo] = field(default_factory=dict)
    global_budgets: tuple[BudgetRule, ...] = ()
    agent_budgets: dict[str, tuple[BudgetRule, ...]] = field(default_factory=dict)
    key_budgets: dict[int, tuple[BudgetRule, ...]] = field(default_factory=dict)
    # agent name -> its queue (config `queue:`), for the agents not on `default`
    queues: dict[str, str] = field(default_factory=dict)


def _api_key(provider: Provider) -> str | None:
    if provider.api_key_env:
        value = os.environ.get(provider.api_key_env)
        if not value:
            log.warning(
                "provider %s: environment variable %s is not set",
                provider.name,
                provider.api_key_env,
            )
        return value or None
    if provider.api_key_encrypted:
        try:
            return decrypt_secret(provider.api_key_encrypted)
        except (SecretUnavailable, ImproperlyConfigured) as exc:
            # Calling it without its key would only collect 401s (and open breakers): it is
            # left out of this snapshot, and its agents are told why.
            log.error("provider %s: %s", provider.name, exc)
            raise ProviderUnusable(
                f"provider {provider.name!r} cannot be called: its stored API key cannot be "
                f"decrypted ({exc})"
            ) from None
    return None


def agent_config(agent: Agent) -> AgentConfig:
    return AgentConfig(
        name=agent.name,
        model=agent.model,
        fallback_models=tuple(agent.fallback_models),
        cheap_model=agent.cheap_model or None,
        system_prompt=agent.system_prompt,
        timeout_s=agent.timeout_s,
        attempt_timeout_s=agent.attempt_timeout_s,
        max_retries=agent.max_retries,
        max_tokens=agent.max_tokens,
        breaker=BreakerConfig(
            failure_threshold=agent.breaker_failure_threshold,
            recovery_timeout_s=agent.breaker_recovery_timeout_s,
            half_open_max_calls=agent.breaker_half_open_max_calls,
            window_size=agent.breaker_window_size,
            minimum_calls=agent.breaker_minimum_calls,
            failure_rate_threshold=agent.breaker_failure_rate,
            slow_call_s=agent.breaker_slow_call_s,
            slow_call_rate_threshold=agent.breaker_slow_call_rate,
            probe_timeout_s=agent.timeout_s + 5.0,
        ),
        rate_limits=RateLimits(rpm=agent.rate_limit_rpm, tpm=agent.rate_limit_tpm),
        cache_ttl_s=agent.cache_ttl_s,
        tools=tuple(
            ToolSpec(
                name=tool["name"],
                kind=tool["kind"],
                description=tool.get("description", ""),
                parameters=tool.get("parameters") or {"type": "object", "properties": {}},
                function=tool.get("function"),
                url=tool.get("url"),
                timeout_s=float(tool.get("timeout_s", 10)),
                max_response_bytes=int(tool.get("max_response_bytes", 65_536)),
            )
            for tool in agent.tools
        ),
        fallback_messages=dict(agent.fallback_messages),
        max_concurrency=agent.max_concurrency,
    )


def keys_build() -> dict[str, KeyInfo]:
    """Every usable key by prefix (revoked ones are left out)."""
    keys = {}
    for key in ApiKey.objects.filter(revoked_at__isnull=True).prefetch_related("agents"):
        keys[key.prefix] = KeyInfo(
            id=key.pk,
            prefix=key.prefix,
            secret_hash=key.secret_hash,
            scopes=key.scope_set,
            agents=frozenset(a.name for a in key.agents.all()),
            expires_at=key.expires_at,
            limits=RateLimits(rpm=key.rate_limit_rpm, tpm=key.rate_limit_tpm),
        )
    return keys


def snapshot_build(version: int) -> Snapshot:
    providers = {p.pk: p for p in Provider.objects.all()}
    provider_configs: dict[int, ProviderConfig] = {}
    broken: dict[str, str] = {}
    for pk, p in providers.items():
        try:
            api_key = _api_key(p)
        except ProviderUnusable as exc:
            broken[p.name] = str(exc)
            continue
        provider_configs[pk] = ProviderConfig(
            name=p.name,
            kind=p.kind,  # type: ignore[arg-type]
            base_url=p.base_url,
            api_key=api_key,
            simulation=dict(p.simulation),
        )
    by_model: dict[str, list[Deployment]] = {}
    by_id: dict[int, Deployment] = {}
    left_out: dict[str, set[str]] = {}  # model -> broken providers its deployments are on
    for row in ModelDeployment.objects.filter(enabled=True).order_by("name", "id"):
        provider = provider_configs.get(row.provider_id)
        if provider is None:
            if row.provider_id in providers:  # else committed after the providers were read:
                left_out.setdefault(row.name, set()).add(providers[row.provider_id].name)
            continue  # the version moved with it, so the next poll has both
        deployment = Deployment(
            id=row.pk,
            model=row.name,
            provider=provider,
            upstream_model=row.upstream_model,
            input_usd_per_mtok=row.input_usd_per_mtok,
            output_usd_per_mtok=row.output_usd_per_mtok,
            cached_input_usd_per_mtok=row.cached_input_usd_per_mtok,
            max_concurrency=row.max_concurrency,
            weight=row.weight,
        )
        by_model.setdefault(row.name, []).append(deployment)
        by_id[row.pk] = deployment
    global_budgets: list[BudgetRule] = []
    agent_budgets: dict[str, list[BudgetRule]] = {}
    key_budgets: dict[int, list[BudgetRule]] = {}
    for budget in Budget.objects.select_related("agent").order_by("id"):
        rule = budget_rule(budget)
        if budget.scope == "global":
            global_budgets.append(rule)
        elif budget.scope == "agent" and budget.agent is not None:
            agent_budgets.setdefault(budget.agent.name, []).append(rule)
        elif budget.scope == "api_key" and budget.api_key_id is not None:
            key_budgets.setdefault(budget.api_key_id, []).append(rule)
    agents: dict[str, AgentConfig] = {}
    unavailable: dict[str, str] = {}
    queues: dict[str, str] = {}
    for agent in Agent.objects.filter(enabled=True):
        if agent.queue != DEFAULT_QUEUE:
            queues[agent.name] = agent.queue
        try:
            agents[agent.name] = agent_config(agent)
        except Exception as exc:  # one unreadable row must not stop the others loading
            log.exception("agent %s: its configuration cannot be loaded", agent.name)
            unavailable[agent.name] = (
                f"agent {agent.name!r} is unavailable: its configuration cannot be loaded "
                f"({type(exc).__name__}); an operator must fix it"
            )
            continue
        # Its model and fallbacks (the cheap model serves simple tasks only): if none is left
        # with a deployment because of a broken provider, it is refused before admission.
        chain = (agent.model, *agent.fallback_models)
        if any(by_model.get(model) for model in chain):
            continue
        causes = sorted({name for model in chain for name in left_out.get(model, ())})
        if causes:
            unavailable[agent.name] = f"agent {agent.name!r} is unavailable: " + "; ".join(
                broken[name] for name in causes
            )
    return Snapshot(
        version=version,
        global_budgets=tuple(global_budgets),
        agent_budgets={k: tuple(v) for k, v in agent_budgets.items()},
        key_budgets={k: tuple(v) for k, v in key_budgets.items()},
        agents=agents,
        unavailable=unavailable,
        broken_providers=broken,
        deployments={model: tuple(items) for model, items in by_model.items()},
        deployments_by_id=by_id,
        keys=keys_build(),
        queues=queues,
    )


PROVIDER_INCIDENT = "provider_secret:"


def provider_incidents_sync(*, broken: Mapping[str, str]) -> None:
    """One open incident per provider whose stored key does not decrypt; resolved when it
    decrypts again (or the provider is gone). Idempotent: each process may call it after each
    reload; the incident's one-open-per-key constraint settles races."""
    from incidents.models import Incident, IncidentStatus, Severity
    from incidents.services import incident_open, incident_resolve_by_key

    open_keys = set(
        Incident.objects.filter(dedup_key__startswith=PROVIDER_INCIDENT)
        .exclude(status=IncidentStatus.RESOLVED)
        .values_list("dedup_key", flat=True)
    )
    for name, problem in sorted(broken.items()):
        if PROVIDER_INCIDENT + name not in open_keys:
            incident_open(
                kind="provider_secret",
                dedup_key=PROVIDER_INCIDENT + name,
                title=f"Provider {name}: its stored API key cannot be decrypted",
                message=problem,
                severity=Severity.MAJOR,
                data={"provider": name},
            )
    for key in sorted(open_keys - {PROVIDER_INCIDENT + name for name in broken}):
        incident_resolve_by_key(
            dedup_key=key, message="the provider's stored API key decrypts again"
        )


CONFIG_INCIDENT = "config:reload"


def _process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(process: str) -> bool:
    """The reporting process (``host:pid``) ran on this host and no longer does."""
    host, _, pid = process.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, someone else's
        return False
    return False


def config_incident_open(*, version: int, problems: list[str], loaded: int) -> None:
    """``config:reload``, one open across processes: a reload of ``version`` failed (the build
    raised) or left agents or providers out. Each process reports a version once."""
    from incidents.models import Severity
    from incidents.services import incident_open

    incident_open(
        kind="config_reload",
        dedup_key=CONFIG_INCIDENT,
        title=f"Config reload failed: version {version}",
        message=(f"{_process()} could not load config v{version} fully: " + "; ".join(problems))[
            :2000
        ],
        severity=Severity.MAJOR,
        data={
            "version": version,
            "serving_version": loaded,
            "process": _process(),
            "problems": problems[:20],
        },
    )


def config_incident_resolve(*, version: int, reported: bool) -> None:
    """A complete reload of ``version`` resolves ``config:reload`` when this process reported
    it, when the version it failed on is older (fixed since), or when the process that
    reported it is gone (a restart, on this host): a healthy process loading the very version a
    running process failed on does not resolve that one's report."""
    from incidents.models import Incident, IncidentStatus
    from incidents.services import incident_resolve_by_key

    incident = (
        Incident.objects.filter(dedup_key=CONFIG_INCIDENT)
        .exclude(status=IncidentStatus.RESOLVED)
        .first()
    )
    if incident is None:
        return
    last = incident.events.filter(kind__in=("opened", "recurred")).order_by("-at", "-id").first()
    data = (last.data or {}) if last is not None else {}
    failed = int(data.get("version", -1))
    if reported or failed < version or _gone(str(data.get("process", ""))):
        incident_resolve_by_key(
            dedup_key=CONFIG_INCIDENT,
            message=f"{_process()} loaded config v{version} completely",
            data={"version": version, "failed_version": failed, "process": _process()},
        )


class LiveConfig:
    """The process's :class:`~agents.runtime.ports.ConfigSource`."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self._failed_version: int | None = None
        self._reported: int | None = None  # the version this process opened config:reload for

    def agent(self, name: str) -> AgentConfig | None:
        return self.snapshot.agents.get(name)

    def deployments(self, model: str) -> tuple[Deployment, ...]:
        return self.snapshot.deployments.get(model, ())

    def key(self, prefix: str) -> KeyInfo | None:
        return self.snapshot.keys.get(prefix)

    def queue(self, name: str) -> str:
        """Agent ``name``'s queue (config ``queue:``): where its queued executions go."""
        return self.snapshot.queues.get(name, DEFAULT_QUEUE)

    def unavailable(self, name: str) -> str | None:
        """Why agent ``name`` cannot run with this process's configuration, or None."""
        return self.snapshot.unavailable.get(name)

    def budgets(self, agent: str, api_key_id: int | None) -> tuple[BudgetRule, ...]:
        snap = self.snapshot
        return (
            snap.global_budgets
            + snap.agent_budgets.get(agent, ())
            + (snap.key_budgets.get(api_key_id, ()) if api_key_id is not None else ())
        )

    def reload(self, *, force: bool = False) -> bool:
        """Rebuild the snapshot if the version moved (sync: call from a thread)."""
        version = config_version_current()
        if not force and version == self.snapshot.version:
            return False
        # A change committed between the queries below moved the version too, so the next
        # poll rebuilds again: the snapshot is never stale for longer than one interval.
        previous = self.snapshot
        try:
            with transaction.atomic():
                snapshot = snapshot_build(version)
        except Exception as exc:
            # Keys above all: whatever broke the build, revocations still take effect. The old
            # version is kept, so the next poll tries the whole build again.
            if self._failed_version != version:
                log.exception("config v%s could not be loaded; reloading API keys only", version)
                self._failed_version = version
                self._report(
                    version,
                    [f"the build failed ({type(exc).__name__}: {exc}"[:500] + "); API keys "
                     f"reloaded, still serving v{previous.version}"],
                    previous.version,
                )  # fmt: skip
            with transaction.atomic():
                keys = keys_build()
            self.snapshot = replace(previous, keys=keys)
            return keys != previous.keys
        self.snapshot = snapshot
        self._failed_version = None
        log.info("config v%s loaded: %d agents", version, len(snapshot.agents))
        if snapshot.broken_providers or previous.broken_providers or previous.version < 0:
            try:
                provider_incidents_sync(broken=snapshot.broken_providers)
            except Exception:  # the incident is a report; the config is loaded either way
                log.exception("could not open or resolve provider incidents")
        left_out = [
            *(
                f"provider {name} left out: {why}"
                for name, why in snapshot.broken_providers.items()
            ),
            *(f"agent {name} left out: {why}" for name, why in snapshot.unavailable.items()),
        ]
        if left_out:
            self._report(version, left_out, version)
        elif self._reported is not None or previous.version < 0:
            try:
                config_incident_resolve(version=version, reported=self._reported is not None)
                self._reported = None
            except Exception:
                log.exception("could not resolve the config reload incident")
        return True

    def _report(self, version: int, problems: list[str], loaded: int) -> None:
        try:
            config_incident_open(version=version, problems=sorted(problems), loaded=loaded)
            self._reported = version
        except Exception:  # the incident is a report; serving goes on either way
            log.exception("could not open the config reload incident")

    async def watch(
        self, interval_s: float = 1.0, on_change: Callable[[], None] | None = None
    ) -> None:
        """Poll for changes until cancelled; ``on_change`` runs (on the loop) after each."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                changed = await asyncio.to_thread(self.reload_in_thread)
            except Exception:  # keep serving the last good config
                log.exception("config reload failed")
                continue
            if changed and on_change is not None:
                on_change()

    def reload_in_thread(self) -> bool:
        close_old_connections()
        try:
            return self.reload()
        finally:
            close_old_connections()
