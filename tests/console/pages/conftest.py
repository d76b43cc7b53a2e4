"""Fixtures of the console page tests: a Django test client signed in as a console role."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

ClientAs = Callable[..., Client]  # (role, name=None) -> Client


@pytest.fixture
def client_as() -> ClientAs:
    """``client_as("operator")``: a test client signed in as a user of that console role (None:
    a user of no role), named ``<role>-user`` unless ``name`` is given, so audit rows read
    ``user:operator-user``. The same name again is the same user. Needs the database (the
    module's ``django_db`` mark or a ``db`` fixture)."""

    def sign_in(role: str | None, name: str | None = None) -> Client:
        username = name or f"{role or 'no-role'}-user"
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User.objects.create_user(username, password="pw-for-tests-1")
        if role is not None:
            user.groups.add(Group.objects.get_or_create(name=role)[0])
        client = Client()
        client.force_login(user)
        return client

    return sign_in


@pytest.fixture
def viewer(client_as: ClientAs) -> Client:
    return client_as("viewer")
