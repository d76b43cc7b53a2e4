"""Console roles: the Django groups ``viewer``, ``operator`` and ``admin`` (docs/INTERFACES.md §4).

Each role includes the ones before it: an operator may do what a viewer may, an admin what an
operator may. Superusers are admins. Admins are staff too, and the ``admin`` group holds every
model permission (granted after each ``migrate``), so the Django admin at /admin/ works for them;
its writes go through the same services as the console (agents/admin.py). A signed-in user in none of the groups has no console role
and gets 403 on every page (an admin adds them to a group with ``manage.py create_user`` or the
admin site).

Pages declare the role they need with :func:`role_required`; a page with actions checks
:func:`has_role` again on every POST (a viewer's forged POST gets 403, whatever the page showed).
Templates read ``console_role``, ``can_operate`` and ``can_admin`` from :func:`context`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

ROLES: tuple[str, ...] = ("viewer", "operator", "admin")  # each includes the ones before it
_RANK = {name: rank for rank, name in enumerate(ROLES)}
_CACHE_ATTR = "_bw_console_role"

F = TypeVar("F", bound=Callable[..., Any])


def role_check(name: str) -> str:
    """``name`` if it is a role, else ValueError naming the roles."""
    if name not in _RANK:
        raise ValueError(f"unknown role {name!r}: expected one of {', '.join(ROLES)}")
    return name


def role_of(user: Any) -> str | None:
    """The user's highest console role, or None (signed out, inactive, or in no role group).
    One query per request at most (the result is kept on the user object)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return "admin"
    cached = getattr(user, _CACHE_ATTR, False)
    if cached is not False:
        return cast(str | None, cached)
    names = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
    role = max(names, key=_RANK.__getitem__) if names else None
    setattr(user, _CACHE_ATTR, role)
    return role


def has_role(user: Any, needed: str) -> bool:
    role = role_of(user)
    return role is not None and _RANK[role] >= _RANK[role_check(needed)]


def role_required(needed: str) -> Callable[[F], F]:
    """The view needs ``needed`` (or a higher role): signed-out visitors go to the login page
    with ``next``; signed-in users without the role get 403."""
    role_check(needed)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, needed):
                raise PermissionDenied(f"this needs the {needed} role")
            return cast(HttpResponse, view(request, *args, **kwargs))

        return cast(F, wrapper)

    return decorate


def grant_admin_permissions(sender: Any = None, **kwargs: Any) -> None:
    """post_migrate: the ``admin`` group gets every permission there is (idempotent)."""
    from django.contrib.auth.models import Group, Permission

    using = kwargs.get("using", "default")
    group = Group.objects.using(using).filter(name="admin").first()
    if group is None:  # before console's 0003 migration, or a flushed test database
        return
    missing = Permission.objects.using(using).exclude(group=group)
    if missing.exists():
        group.permissions.add(*missing)


def context(request: HttpRequest) -> dict[str, Any]:
    """Template context: the signed-in user's role and what it may do."""
    role = role_of(getattr(request, "user", None))
    rank = _RANK.get(role or "", -1)
    return {
        "console_role": role,
        "can_operate": rank >= _RANK["operator"],
        "can_admin": rank >= _RANK["admin"],
    }
