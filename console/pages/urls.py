"""The console's pages (docs/INTERFACES.md §4, "Console"): one module per page in console/pages/."""

from __future__ import annotations

from django.urls import path

from console.pages import agents, audit, budgets, executions, incidents, keys, overview

urlpatterns = [
    path("", overview.overview, name="overview"),
    path("overview/results/", overview.overview_results, name="overview_results"),
    path("agents/", agents.placeholder, name="agents"),
    path("agents/<str:name>/", agents.placeholder, name="agent"),
    path("executions/", executions.placeholder, name="executions"),
    path("executions/<uuid:execution_id>/", executions.placeholder, name="execution"),
    path("budgets/", budgets.placeholder, name="budgets"),
    path("incidents/", incidents.placeholder, name="incidents"),
    path("incidents/<int:incident_id>/", incidents.placeholder, name="incident"),
    path("keys/", keys.placeholder, name="keys"),
    path("audit/", audit.placeholder, name="audit"),
]
