"""The console's pages (docs/INTERFACES.md §4, "Console"): one module per page in console/pages/."""

from __future__ import annotations

from django.urls import path

from console.pages import agents, audit, budgets, executions, incidents, keys, overview

urlpatterns = [
    path("", overview.placeholder, name="overview"),
    path("agents/", agents.placeholder, name="agents"),
    path("agents/<str:name>/", agents.placeholder, name="agent"),
    path("executions/", executions.explorer, name="executions"),
    path("executions/<uuid:execution_id>/", executions.detail, name="execution"),
    path(
        "executions/<uuid:execution_id>/body/",
        executions.detail_body,
        name="execution_body",
    ),
    path("budgets/", budgets.budgets, name="budgets"),
    path("budgets/<int:budget_id>/<str:action>/", budgets.budget_action, name="budget_action"),
    path("incidents/", incidents.placeholder, name="incidents"),
    path("incidents/<int:incident_id>/", incidents.placeholder, name="incident"),
    path("keys/", keys.placeholder, name="keys"),
    path("audit/", audit.placeholder, name="audit"),
]
