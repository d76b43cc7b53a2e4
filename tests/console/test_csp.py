"""A strict Content-Security-Policy on the console pages (issue 10, point 15).

Scripts and styles come from the server's own static files only: no 'unsafe-inline', no
'unsafe-eval', and no page carries an inline script, an inline event handler or a style
attribute (which the policy would refuse). The stock admin and the API docs page are checked
too, and tests/console/test_csp_browser.py loads them in a real browser.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import User
from django.test import Client

from agents.models import Agent, Provider

pytestmark = pytest.mark.django_db


class _Inline(HTMLParser):
    """Whatever in a page the policy would refuse: inline scripts (JSON data blocks are not
    scripts), on* handler attributes, style attributes and <style> elements, and scripts or
    stylesheets from another origin."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name, _ in attrs:
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>")
            if name == "style":
                self.problems.append(f"<{tag} style=...>")
        if tag == "style":
            self.problems.append("<style>")
        if tag == "script":
            src = values.get("src")
            if src is None and values.get("type") != "application/json":
                self.problems.append("inline <script>")
            elif src is not None and re.match(r"^(https?:)?//", src):
                self.problems.append(f"<script src={src}>")
        if tag == "link" and (values.get("rel") or "") == "stylesheet":
            href = values.get("href") or ""
            if re.match(r"^(https?:)?//", href):
                self.problems.append(f"<link href={href}>")


def _refused_inline(html: str) -> list[str]:
    parser = _Inline()
    parser.feed(html)
    return parser.problems


def _policy(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


@pytest.fixture
def admin_client(client: Client) -> Client:
    user = User.objects.create_superuser("root", "root@example.com", "a-long-passphrase-1")
    client.force_login(user)
    Provider.objects.create(name="sim", kind="simulated")
    Agent.objects.create(name="helper", model="m")
    return client


PAGES = [
    "/",
    "/admin/",
    "/admin/agents/agent/",
    "/admin/agents/agent/add/",
    "/admin/agents/provider/{provider}/change/",
    "/admin/agents/apikey/",
    "/api/v1/docs",
]


@pytest.mark.parametrize("path", PAGES)
def test_console_pages_carry_a_strict_policy_and_nothing_it_would_refuse(
    admin_client: Client, path: str
) -> None:
    response = admin_client.get(path.format(provider=Provider.objects.get().pk))
    assert response.status_code == 200
    policy = _policy(response["Content-Security-Policy"])
    for directive in ("script-src", "style-src"):
        assert "'self'" in policy[directive]
        assert "'unsafe-inline'" not in policy[directive]
        assert "'unsafe-eval'" not in policy[directive]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert _refused_inline(response.content.decode()) == []


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_the_login_pages_carry_the_policy_too(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]
    assert _refused_inline(response.content.decode()) == []


def test_the_api_docs_are_served_from_our_own_static_files(admin_client: Client) -> None:
    html = admin_client.get("/api/v1/docs").content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in html
    assert "cdn." not in html
    from django.contrib.staticfiles import finders

    # Served by console/asgi.py's static handler from the finders, no collectstatic needed.
    assert finders.find("ninja/swagger-ui-init.js") is not None
    assert finders.find("ninja/swagger-ui-bundle.js") is not None
