"""Console users: create one with a role (``manage.py create_user``), audited."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from console.roles import ROLES
from core.audit import audit_record
from core.errors import Conflict, ValidationFailed

USERNAME_MAX = 150


@dataclass(frozen=True)
class CreatedUser:
    user: AbstractBaseUser
    password: str  # shown once; only its hash is stored


def user_create(
    *, username: str, role: str, actor: str, email: str = "", password: str | None = None
) -> CreatedUser:
    """A console user in ``role``'s group, with ``password`` or a generated one (returned once).
    Admins are staff (the Django admin at /admin/ is theirs too; console/roles.py).

    Refused before anything is written: an unknown role, a blank or too long username, one that
    exists (409), or a password Django's validators refuse.
    """
    errors = []
    username = username.strip()
    if role not in ROLES:
        errors.append(f"role: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if not username:
        errors.append("username: must not be blank")
    elif len(username) > USERNAME_MAX:
        errors.append(f"username: at most {USERNAME_MAX} characters")
    generated = password is None
    secret = secrets.token_urlsafe(15) if password is None else password
    if not generated:
        try:
            validate_password(secret)
        except ValidationError as exc:
            errors.extend(f"password: {message}" for message in exc.messages)
    if errors:
        raise ValidationFailed(errors)
    model = get_user_model()
    with transaction.atomic():
        if model._default_manager.filter(username=username).exists():
            raise Conflict(f"user {username!r} exists")
        user = model._default_manager.create_user(
            username=username, email=email, password=secret, is_staff=role == "admin"
        )
        group, _ = Group.objects.get_or_create(name=role)
        user.groups.add(group)
        audit_record(
            actor=actor,
            action="user_create",
            target_type="user",
            target_id=username,
            after={"username": username, "role": role, "email": email},
        )
    return CreatedUser(user=user, password=secret)
