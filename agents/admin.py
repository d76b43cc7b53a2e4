from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

from agents.access.crypto import encrypt_secret
from agents.config.schema import base_url_refusal
from agents.models import Agent, ApiKey, Execution, ModelDeployment, Provider
from agents.services import api_key_revoke
from core.audit import audit_record


class ProviderForm(forms.ModelForm):
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
        self.encrypted_api_key = ""
        self.forgets_stored_key = False
        secret = data.get("new_api_key")
        if secret and data.get("api_key_env"):
            self.add_error("new_api_key", "use either api_key_env or a stored secret, not both")
        elif data.get("api_key_env") and self.instance.api_key_encrypted:
            # The env var replaces the stored key. The model's constraint check skips
            # api_key_encrypted (not a form field), so without this the save is a 500.
            self.instance.api_key_encrypted = ""
            self.forgets_stored_key = True
        elif secret:
            # Encrypt here, not in save_model: missing keys become a form error, not a 500.
            try:
                self.encrypted_api_key = encrypt_secret(secret)
            except ImproperlyConfigured as exc:
                self.add_error("new_api_key", str(exc))
            else:
                # The model's one-key-source constraint is validated after clean(): give it
                # the token so it judges the provider as it will be saved.
                self.instance.api_key_encrypted = self.encrypted_api_key
        return data


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ["name", "kind", "base_url", "key_source"]
    search_fields = ["name"]

    @admin.display(description="key")
    def key_source(self, obj: Provider) -> str:
        if obj.api_key_env:
            return f"env {obj.api_key_env}"
        return "stored (encrypted)" if obj.has_stored_secret else "none"

    def save_model(self, request: HttpRequest, obj: Provider, form: Any, change: bool) -> None:
        token = getattr(form, "encrypted_api_key", "")
        forgets = getattr(form, "forgets_stored_key", False)
        if token:
            obj.api_key_encrypted = token
        elif forgets:
            obj.api_key_encrypted = ""
        super().save_model(request, obj, form, change)
        if token or forgets:
            audit_record(
                actor=f"user:{request.user.get_username()}",
                action="provider_secret_set" if token else "provider_secret_clear",
                target_type="provider",
                target_id=str(obj.pk),
                after={"secret": "stored (encrypted)" if token else f"env {obj.api_key_env}"},
            )


@admin.register(ModelDeployment)
class ModelDeploymentAdmin(admin.ModelAdmin):
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


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "timeout_s", "max_retries", "cache_ttl_s", "enabled"]
    list_filter = ["enabled", "model"]
    search_fields = ["name", "description"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "scopes", "expires_at", "revoked_at", "last_used_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    # Revocation is the audited service (the action below), not a date typed into a field.
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    exclude = ["secret_hash"]
    search_fields = ["name", "prefix"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are created by create_api_key / the API, which show them once

    @admin.action(description="Revoke the selected API keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        revoked = 0
        for key_id in list(queryset.filter(revoked_at__isnull=True).values_list("pk", flat=True)):
            _, now = api_key_revoke(
                key_id=key_id,
                actor=f"user:{request.user.get_username()}",
                reason="revoked in the admin",
            )
            revoked += now
        self.message_user(
            request,
            f"Revoked {revoked} API key(s); every serving process refuses them within about a "
            "second.",
            messages.SUCCESS,
        )


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    list_display = ["id", "agent_name", "status", "model", "cost_usd", "latency_ms", "created_at"]
    list_filter = ["status", "cached", "fallback_reason"]
    search_fields = ["id", "agent_name"]
    date_hierarchy = "created_at"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
