"""The console's pages (docs/INTERFACES.md §4, "Console"): one module per page in console/pages/."""

from __future__ import annotations

from django.urls import path

from console.pages import (
    agents,
    audit,
    budgets,
    drills,
    executions,
    incidents,
    keys,
    notifications,
    overview,
    slos,
)

urlpatterns = [
    path("", overview.overview, name="overview"),
    path("overview/results/", overview.overview_results, name="overview_results"),
    path("agents/", agents.agents_page, name="agents"),
    path("agents/stats.csv", agents.agents_csv, name="agents_csv"),
    path("agents/<str:name>/", agents.agent_page, name="agent"),
    path("agents/<str:name>/config/", agents.agent_config, name="agent_config"),
    path("agents/<str:name>/breaker/", agents.agent_breaker, name="agent_breaker"),
    path(
        "agents/<str:name>/deployments/<int:deployment_id>/breaker/",
        agents.deployment_breaker,
        name="agent_deployment_breaker",
    ),
    path("executions/", executions.explorer, name="executions"),
    path("executions/<uuid:execution_id>/", executions.detail, name="execution"),
    path(
        "executions/<uuid:execution_id>/body/",
        executions.detail_body,
        name="execution_body",
    ),
    path("budgets/", budgets.budgets, name="budgets"),
    path("budgets/<int:budget_id>/<str:action>/", budgets.budget_action, name="budget_action"),
    path("incidents/", incidents.incident_list, name="incidents"),
    path("incidents/<int:incident_id>/", incidents.incident_detail, name="incident"),
    path(
        "incidents/<int:incident_id>/acknowledge/",
        incidents.incident_acknowledge,
        name="incident_acknowledge",
    ),
    path(
        "incidents/<int:incident_id>/resolve/", incidents.incident_resolve, name="incident_resolve"
    ),
    path(
        "incidents/<int:incident_id>/comment/", incidents.incident_comment, name="incident_comment"
    ),
    path(
        "incidents/<int:incident_id>/postmortem/",
        incidents.incident_postmortem,
        name="incident_postmortem",
    ),
    path("slos/", slos.slos_page, name="slos"),
    path("keys/", keys.key_list, name="keys"),
    path("keys/<int:key_id>/revoke/", keys.key_revoke, name="key_revoke"),
    path("audit/", audit.audit_list, name="audit"),
    path("notifications/", notifications.notifications_page, name="notifications"),
    path(
        "notifications/<str:name>/test/",
        notifications.notification_send_test,
        name="notification_test",
    ),
    path(
        "notifications/deliveries/<uuid:delivery_id>/",
        notifications.notification_delivery,
        name="notification_delivery",
    ),
    path("drills/", drills.drill_list, name="drills"),
    path("drills/start/", drills.drill_start, name="drill_start"),
    path("drills/<int:drill_id>/", drills.drill_card, name="drill"),
]
