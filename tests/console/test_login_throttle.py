"""Logins are throttled (issue 10, point 14): django-axes on the console's /login/ and the admin's.

Five failures for one username from one address lock that pair out for 15 minutes (the right
password included); other usernames and other addresses are not affected; the lockout is in the
audit trail; after the cool-off, or an administrator's reset, the right password works again.
The cool-off is crossed by moving the recorded failures back in time, not by waiting.
"""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from core.models import AuditEvent

pytestmark = pytest.mark.django_db

PASSWORD = "the-right-passphrase-42"
HOME = "10.0.0.1"


@pytest.fixture
def users() -> list[User]:
    return [User.objects.create_user(name, password=PASSWORD) for name in ("alice", "bob", "carol")]


def _login(username: str, password: str, *, ip: str = HOME, path: str = "/login/") -> int:
    """A login through the form; 302 = logged in (as that user), else the status."""
    client = Client()
    response = client.post(
        path, {"username": username, "password": password, "next": "/"}, REMOTE_ADDR=ip
    )
    if response.status_code == 302:
        assert client.session.get("_auth_user_id") == str(User.objects.get(username=username).pk)
    else:
        assert "_auth_user_id" not in client.session
    return int(response.status_code)


def _fail(username: str, times: int, *, ip: str = HOME, path: str = "/login/") -> list[int]:
    return [_login(username, "wrong", ip=ip, path=path) for _ in range(times)]


def test_the_settings_are_five_failures_per_username_and_address_and_15_minutes() -> None:
    assert settings.AXES_FAILURE_LIMIT == 5
    assert settings.AXES_COOLOFF_TIME.total_seconds() == 15 * 60
    assert settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"]]


def test_the_right_password_logs_in(users: list[User]) -> None:
    assert _login("alice", PASSWORD) == 302


def test_after_five_failures_the_right_password_is_refused(users: list[User]) -> None:
    first_four = _fail("alice", 4)
    assert first_four == [200] * 4  # the form again, with its error
    assert _fail("alice", 1) == [429]  # the fifth locks the pair out
    assert _login("alice", PASSWORD) == 429


def test_the_lockout_page_says_what_happened(users: list[User]) -> None:
    _fail("alice", 5)
    response = Client().post(
        "/login/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR=HOME
    )
    assert response.status_code == 429
    assert b"Too many failed logins" in response.content
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]


def test_other_usernames_and_other_addresses_are_not_affected(users: list[User]) -> None:
    _fail("alice", 5)
    assert _login("bob", PASSWORD) == 302  # same address, another username
    assert _login("alice", PASSWORD, ip="10.0.0.2") == 302  # same username, another address
    assert _login("alice", PASSWORD) == 429  # and the locked pair still is


def test_the_right_password_works_again_after_the_cool_off(users: list[User]) -> None:
    from axes.models import AccessAttempt

    _fail("alice", 5)
    assert _login("alice", PASSWORD) == 429
    # Fourteen minutes later: still locked.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=14))
    assert _login("alice", PASSWORD) == 429
    # Past fifteen minutes since the failure that locked it (tries during the cool-off do not
    # extend it): the right password works.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=15, seconds=1))
    assert _login("alice", PASSWORD) == 302


def test_an_administrators_reset_lifts_the_lockout(users: list[User]) -> None:
    _fail("alice", 5)
    call_command("axes_reset_username", "alice", stdout=io.StringIO())
    assert _login("alice", PASSWORD) == 302


def test_a_success_starts_the_count_again(users: list[User]) -> None:
    _fail("alice", 4)
    assert _login("alice", PASSWORD) == 302
    assert _fail("alice", 4) == [200] * 4
    assert _login("alice", PASSWORD) == 302


def test_the_admin_login_is_throttled_too(users: list[User]) -> None:
    _fail("carol", 5, path="/admin/login/")
    assert _login("carol", PASSWORD) == 429


def test_a_lockout_is_audited_once_with_the_address(users: list[User]) -> None:
    _fail("alice", 5)
    for _ in range(3):  # refused tries during the cool-off
        assert _login("alice", PASSWORD) == 429
    events = list(AuditEvent.objects.filter(action="login_lockout"))
    assert len(events) == 1
    event = events[0]
    assert (event.target_type, event.target_id) == ("user", "alice")
    assert event.actor == f"login:{HOME}"
    assert event.after is not None
    assert event.after["ip_address"] == HOME
    assert event.after["failures"] == 5
    assert event.after["cooloff_s"] == 900
    assert PASSWORD not in repr(event.after) + event.reason
