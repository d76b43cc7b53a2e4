"""Console roles are the groups viewer, operator and admin; each includes the ones before it."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.test import Client

from console.roles import ROLES, has_role, role_of
from core.models import AuditEvent

pytestmark = pytest.mark.django_db


def _user(name: str, *groups: str, superuser: bool = False) -> User:
    user = User.objects.create_user(name, password="pw-for-tests-1")
    user.is_superuser = superuser
    user.save()
    for group in groups:
        user.groups.add(Group.objects.get(name=group))
    return user


def test_a_migration_creates_the_three_role_groups() -> None:
    assert set(Group.objects.filter(name__in=ROLES).values_list("name", flat=True)) == set(ROLES)


def test_the_highest_group_is_the_role_and_superusers_are_admins() -> None:
    assert role_of(_user("v", "viewer")) == "viewer"
    assert role_of(_user("vo", "viewer", "operator")) == "operator"
    assert role_of(_user("root", superuser=True)) == "admin"
    assert role_of(_user("nobody")) is None


def test_each_role_includes_the_roles_before_it() -> None:
    operator = _user("o", "operator")
    assert has_role(operator, "viewer")
    assert has_role(operator, "operator")
    assert not has_role(operator, "admin")


def test_an_unknown_role_name_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of viewer, operator, admin"):
        has_role(_user("x", "viewer"), "owner")


def test_signed_out_visitors_go_to_the_login_page_with_next() -> None:
    response = Client().get("/budgets/?window=7d")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/budgets/%3Fwindow%3D7d"


def test_a_user_without_a_role_gets_403_saying_how_to_get_one() -> None:
    client = Client()
    client.force_login(_user("nobody"))
    response = client.get("/")
    assert response.status_code == 403
    assert b"has no console role" in response.content


def test_create_user_prints_a_password_that_signs_in_and_audits_the_creation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    call_command("create_user", "--username", "olga", "--role", "operator")
    password = capsys.readouterr().out.strip()
    assert len(password) >= 16
    user = User.objects.get(username="olga")
    assert user.check_password(password)
    assert role_of(user) == "operator"
    event = AuditEvent.objects.get(action="user_create")
    assert event.after is not None
    assert (event.target_id, event.after["role"]) == ("olga", "operator")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--username", "x", "--role", "owner"], "role: unknown role 'owner'"),
        (["--username", "  ", "--role", "viewer"], "username: must not be blank"),
        (["--username", "a" * 151, "--role", "viewer"], "username: at most 150 characters"),
    ],
    ids=["unknown-role", "blank-username", "long-username"],
)
def test_create_user_refuses_bad_input_before_writing(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("create_user", *args)
    assert not User.objects.exists()
    assert not AuditEvent.objects.exists()


def test_create_user_refuses_an_existing_username() -> None:
    _user("olga", "viewer")
    with pytest.raises(CommandError, match="user 'olga' exists"):
        call_command("create_user", "--username", "olga", "--role", "admin")
    assert role_of(User.objects.get(username="olga")) == "viewer"


def test_create_user_makes_admins_staff_with_every_permission(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from django.contrib.auth.models import Permission

    from console.roles import grant_admin_permissions

    grant_admin_permissions()  # what every migrate ends with
    call_command("create_user", "--username", "ada", "--role", "admin")
    call_command("create_user", "--username", "otto", "--role", "operator")
    ada, otto = User.objects.get(username="ada"), User.objects.get(username="otto")
    assert ada.is_staff
    assert not otto.is_staff
    assert ada.has_perm("agents.change_agent")
    assert ada.get_all_permissions() >= {
        f"{p.content_type.app_label}.{p.codename}" for p in Permission.objects.all()
    }
    assert not otto.has_perm("agents.change_agent")
