"""The admin writes only through the services, so it validates as ``apply`` and the API do and
every write is audited once (actor ``user:<name>``, before/after); what has no service is
read-only here.

- Agent: ``agent_create`` / ``agent_update`` / ``agent_delete`` (409 while a key is restricted
  to the agent alone). Provider and ModelDeployment: ``config_apply`` of a one-entry document
  (plus ``provider_secret_set`` for a new key); their deletion is ``apply --prune``'s.
- ApiKey: read-only; revoking is an action calling ``api_key_revoke`` (creating a key shows its
  plaintext once, which belongs to the API and ``create_api_key``). Execution: read-only.

A form is checked by running its service in a savepoint that is always rolled back: the
service's errors land on the form, naming the field, and nothing is written. ``save_model``
then runs the service for real.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models, transaction
from django.forms.models import construct_instance
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from agents.access.crypto import encrypt_secret
from agents.access.services import api_key_revoke
from agents.config.schema import base_url_refusal
from agents.models import Agent, ApiKey, Execution, ModelDeployment, Provider
from agents.services import agent_create, agent_delete, agent_update
from budgets.models import Budget, BudgetScope, BudgetWindow
from core.errors import ApplicationError, ValidationFailed


def admin_actor(request: HttpRequest) -> str:
    return f"user:{request.user.get_username()}"


class _RollBack(Exception):
    """Ends a dry run: the savepoint is rolled back even though the service succeeded."""


def _dry_run(write: Callable[[], object]) -> ApplicationError | None:
    """The error ``write`` answers (None: it would succeed), with nothing written."""
    try:
        with transaction.atomic():
            write()
            raise _RollBack
    except _RollBack:
        return None
    except ApplicationError as exc:
        return exc


def _one_entry(section: str, spec: Mapping[str, Any], *, actor: str) -> None:
    """``config_apply`` of a document holding only ``spec`` under ``section``: the rules (and the
    audit event) of ``apply`` for one provider or deployment."""
    from pydantic import ValidationError as SpecError

    from agents.config.apply import config_apply
    from agents.config.schema import ConfigDocument, format_errors

    try:
        document = ConfigDocument.model_validate({section: [dict(spec)]})
    except SpecError as exc:
        raise ValidationFailed(format_errors(exc)) from None
    config_apply(document=document, actor=actor)


_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*")


class ServiceForm(forms.ModelForm):
    """A model form saved by a service call (``write``), validated by a dry run of it."""

    # What a one-entry `apply` puts before each error's path ("models[0].weight: ...").
    entry_prefix: ClassVar[re.Pattern[str]] = re.compile(r"^(?:providers|models)\[0\](?:\.|: )")
    column_for: ClassVar[dict[str, str]] = {}

    def write(self, *, actor: str) -> models.Model:
        """Make the database match the form's instance through the services; the stored row."""
        raise NotImplementedError

    def _post_clean(self) -> None:
        # The service's checks first: they name the field, where the model's constraints
        # (checked after, for what only they catch) would answer with a constraint's name.
        try:
            self.instance = construct_instance(
                self, self.instance, self._meta.fields, self._meta.exclude
            )
        except ValidationError as exc:
            self._update_errors(exc)  # type: ignore[attr-defined]
            return
        if not self.errors:
            error = _dry_run(lambda: self.write(actor="system:admin-check"))
            if error is not None:
                self.add_service_errors(error)
                return
        super()._post_clean()  # type: ignore[misc]

    def add_service_errors(self, error: ApplicationError) -> None:
        lines = error.errors if isinstance(error, ValidationFailed) else [error.message]
        for raw in lines:
            line = self.entry_prefix.sub("", raw)
            self.add_error(self._field_of(line.split(": ", 1)[0]), line)

    def _field_of(self, path: str) -> str | None:
        """The form field a ``path`` (``timeout_s``, ``breaker.window_size``, ``tools[0].url``)
        is about; None for a message that names no path (a non-field error)."""
        if not _PATH.fullmatch(path):
            return None
        dotted = ".".join(re.sub(r"\[\d+\]", "", path).split(".")[:2])
        for name in (
            self.column_for.get(dotted),
            dotted.replace(".", "_"),
            dotted.split(".")[0],
        ):
            if name in self.fields:
                return name
        return None


class ServiceAdmin(admin.ModelAdmin):
    """Saves through ``form.write``; an error the service answers only now (a concurrent change
    since the check) is a message, with everything rolled back. No bulk delete."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        stored = form.write(actor=admin_actor(request))
        obj.pk = stored.pk
        obj._state.adding = False
        obj.refresh_from_db()

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ApplicationError as exc:  # raised out of the view's transaction: rolled back
            messages.error(request, exc.message)
            return HttpResponseRedirect(request.get_full_path())

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # QuerySet.delete(), around the service
        return actions


# --- providers and deployments ---------------------------------------------------------------


class ProviderForm(ServiceForm):
    base_url = forms.URLField(max_length=500, required=False, assume_scheme="https")
    new_api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False),
        help_text=(
            "Write-only: stored encrypted, never shown again. Leave blank to keep. "
            "Naming an env var instead forgets a stored key (as `apply` does)."
        ),
    )

    class Meta:
        model = Provider
        fields = ["name", "kind", "base_url", "api_key_env", "simulation"]

    def clean_base_url(self) -> str:
        value = str(self.cleaned_data.get("base_url") or "")
        refusal = base_url_refusal(value) if value else None
        if refusal is not None:
            raise forms.ValidationError(refusal)  # as apply and the API refuse it
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        secret = data.get("new_api_key")
        if secret and data.get("api_key_env"):
            self.add_error("new_api_key", "use either api_key_env or a stored secret, not both")
        elif data.get("api_key_env") and self.instance.api_key_encrypted:
            # The env var replaces the stored key (apply clears it). The model's constraint
            # check skips api_key_encrypted (not a form field): judge the provider as saved.
            self.instance.api_key_encrypted = ""
        elif secret:
            # Encrypt here, not when saving: missing keys become a form error, not a 500.
            try:
                self.instance.api_key_encrypted = encrypt_secret(secret)
            except ImproperlyConfigured as exc:
                self.add_error("new_api_key", str(exc))
        return data

    def write(self, *, actor: str) -> models.Model:
        provider = self.instance
        spec: dict[str, Any] = {"name": provider.name, "kind": provider.kind}
        if provider.base_url:
            spec["base_url"] = provider.base_url
        if provider.api_key_env:
            spec["api_key_env"] = provider.api_key_env
        if provider.simulation:
            spec["simulation"] = provider.simulation
        _one_entry("providers", spec, actor=actor)
        secret = self.cleaned_data.get("new_api_key")
        if secret:
            from agents.access.services import provider_secret_set

            provider_secret_set(provider_name=provider.name, secret=secret, actor=actor)
        return Provider.objects.get(name=provider.name)


@admin.register(Provider)
class ProviderAdmin(ServiceAdmin):
    form = ProviderForm
    list_display = ["name", "kind", "base_url", "key_source"]
    search_fields = ["name"]

    @admin.display(description="key")
    def key_source(self, obj: Provider) -> str:
        if obj.api_key_env:
            return f"env {obj.api_key_env}"
        return "stored (encrypted)" if obj.has_stored_secret else "none"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["name"] if obj is not None else []  # apply finds a provider by its name

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # `apply --prune` deletes (and audits) what the file omits


class DeploymentForm(ServiceForm):
    class Meta:
        model = ModelDeployment
        fields = [
            "name",
            "provider",
            "upstream_model",
            "input_usd_per_mtok",
            "output_usd_per_mtok",
            "cached_input_usd_per_mtok",
            "max_concurrency",
            "weight",
            "enabled",
        ]

    def write(self, *, actor: str) -> models.Model:
        deployment = self.instance
        provider = deployment.provider.name if deployment.provider_id else ""
        _one_entry(
            "models",
            {
                "name": deployment.name,
                "provider": provider,
                "upstream_model": deployment.upstream_model,
                "input_usd_per_mtok": deployment.input_usd_per_mtok,
                "output_usd_per_mtok": deployment.output_usd_per_mtok,
                "cached_input_usd_per_mtok": deployment.cached_input_usd_per_mtok,
                "max_concurrency": deployment.max_concurrency,
                "weight": deployment.weight,
                "enabled": deployment.enabled,
            },
            actor=actor,
        )
        return ModelDeployment.objects.get(
            name=deployment.name,
            provider__name=provider,
            upstream_model=deployment.upstream_model,
        )


@admin.register(ModelDeployment)
class ModelDeploymentAdmin(ServiceAdmin):
    form = DeploymentForm
    list_display = [
        "name",
        "provider",
        "upstream_model",
        "input_usd_per_mtok",
        "output_usd_per_mtok",
        "max_concurrency",
        "weight",
        "enabled",
    ]
    list_filter = ["provider", "enabled"]
    search_fields = ["name", "upstream_model"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # apply finds a deployment by these: changing one would be another deployment.
        return ["name", "provider", "upstream_model"] if obj is not None else []

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # `apply --prune` deletes (and audits) what the file omits


# --- agents ----------------------------------------------------------------------------------

_JSON_DEFAULTS: dict[str, Any] = {"fallback_models": [], "tools": [], "fallback_messages": {}}


def _patch_between(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7396, as ``agent_update`` takes) turning ``current`` into
    ``wanted``: a key ``wanted`` lacks is null, and mappings are patched key by key."""
    patch: dict[str, Any] = {key: None for key in current if key not in wanted}
    for key, value in wanted.items():
        old = current.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            inner = _patch_between(old, value)
            if inner:
                patch[key] = inner
        elif key not in current or old != value:
            patch[key] = value
    return patch


class AgentForm(ServiceForm):
    daily_budget_usd = forms.DecimalField(
        required=False, help_text="The agent's daily budget (USD); blank for none."
    )
    column_for: ClassVar[dict[str, str]] = {
        "breaker.failure_rate_threshold": "breaker_failure_rate",
        "breaker.slow_call_rate_threshold": "breaker_slow_call_rate",
    }

    class Meta:
        model = Agent
        fields = [
            "name",
            "description",
            "model",
            "fallback_models",
            "cheap_model",
            "system_prompt",
            "timeout_s",
            "attempt_timeout_s",
            "max_retries",
            "max_tokens",
            "breaker_failure_threshold",
            "breaker_recovery_timeout_s",
            "breaker_half_open_max_calls",
            "breaker_window_size",
            "breaker_minimum_calls",
            "breaker_failure_rate",
            "breaker_slow_call_s",
            "breaker_slow_call_rate",
            "rate_limit_rpm",
            "rate_limit_tpm",
            "cache_ttl_s",
            "tools",
            "fallback_messages",
            "slo_availability",
            "slo_latency_ms",
            "slo_latency_quantile",
            "max_concurrency",
            "queue",
            "enabled",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from agents.selectors import agent_spec_dict

        super().__init__(*args, **kwargs)
        self.current: dict[str, Any] | None = None  # the agent as stored, for the patch
        if self.instance.pk is not None:
            daily = (
                Budget.objects.filter(
                    scope=BudgetScope.AGENT, window=BudgetWindow.DAILY, agent=self.instance
                )
                .values_list("limit_usd", flat=True)
                .first()
            )
            self.current = agent_spec_dict(self.instance, daily)
            self.initial.setdefault("daily_budget_usd", daily)

    def spec(self) -> dict[str, Any]:
        """The form's agent as config-as-code fields (``AgentSpec``), JSON columns as typed (the
        service names a wrong type)."""
        from agents.selectors import agent_spec_dict

        probe = copy.copy(self.instance)
        for name, default in _JSON_DEFAULTS.items():
            setattr(probe, name, copy.copy(default))
        spec = agent_spec_dict(probe, self.cleaned_data.get("daily_budget_usd"))
        for name, default in _JSON_DEFAULTS.items():
            value = getattr(self.instance, name)
            spec[name] = copy.copy(default) if value is None else value
        return spec

    def write(self, *, actor: str) -> models.Model:
        spec = self.spec()
        if self.current is None:
            name = agent_create(data=spec, actor=actor)
        else:
            name = self.current["name"]
            agent_update(name=name, patch=_patch_between(self.current, spec), actor=actor)
        return Agent.objects.get(name=name)


@admin.register(Agent)
class AgentAdmin(ServiceAdmin):
    form = AgentForm
    list_display = ["name", "model", "timeout_s", "max_retries", "cache_ttl_s", "enabled"]
    list_filter = ["enabled", "model"]
    search_fields = ["name", "description"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["name"] if obj is not None else []  # agent_update refuses a new name

    def delete_model(self, request: HttpRequest, obj: Agent) -> None:
        agent_delete(name=obj.name, actor=admin_actor(request))

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except ApplicationError as exc:  # the API's 409; the view's transaction rolled back
            messages.error(request, exc.message)
            return HttpResponseRedirect(reverse("admin:agents_agent_change", args=[object_id]))

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # agent_delete deletes (and audits) the agent's budgets, which are read-only here.
        perms_needed.discard(Budget._meta.verbose_name)
        return deleted, counts, perms_needed, protected


# --- read-only -------------------------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    # Created by api_key_create (the API, create_api_key), which shows the key once; revoked by
    # the action below; changed nowhere by hand (an edited allow-list would be unaudited).
    list_display = ["name", "prefix", "scopes", "expires_at", "revoked_at", "last_used_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    exclude = ["secret_hash"]
    search_fields = ["name", "prefix"]
    actions = ["revoke"]

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("agents.change_apikey"))

    @admin.action(description="Revoke the selected API keys", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        revoked = 0
        for key_id in list(queryset.filter(revoked_at__isnull=True).values_list("pk", flat=True)):
            _, now = api_key_revoke(
                key_id=key_id, actor=admin_actor(request), reason="revoked in the admin"
            )
            revoked += now
        self.message_user(
            request,
            f"Revoked {revoked} API key(s); every serving process refuses them within about a "
            "second.",
            messages.SUCCESS,
        )


@admin.register(Execution)
class ExecutionAdmin(ReadOnlyAdmin):
    list_display = ["id", "agent_name", "status", "model", "cost_usd", "latency_ms", "created_at"]
    list_filter = ["status", "cached", "fallback_reason"]
    search_fields = ["id", "agent_name"]
    date_hierarchy = "created_at"
