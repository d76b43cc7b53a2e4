"""The one NinjaAPI, mounted at /api/v1/. Each app contributes a Router from <app>/api.py."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from pydantic import BaseModel

from agents.runtime.state import DependencyUnavailable
from agents.schemas import dotted, text_problems, validation_message
from core.errors import (
    ApplicationError,
    BodyTooLarge,
    ServiceUnavailable,
    Unauthenticated,
    ValidationFailed,
    error_body,
)

logger = logging.getLogger("breakwater.api")

api = NinjaAPI(
    title="Breakwater API",
    version="1",
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)


# --- no NUL characters, no lone surrogates -----------------------------------------------------
# JSON allows "\u0000" and lone surrogates ("\ud800") in strings; PostgreSQL text and jsonb
# columns refuse NUL, and a surrogate cannot be encoded as UTF-8 at all (not stored, not sent
# upstream). Refused here, for every operation, after authentication and validation and before
# the handler runs: a clear 422 naming the field, instead of a 500 on write (or an execution that
# runs, costs money and then cannot be stored). SQLite would store NUL; the API answers the same
# on both. (The execute body is also checked by its schema: execute is served without ninja.)


def _nul_paths(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, BaseModel):
        value = value.model_dump()
    for loc, problem, in_key in text_problems(value, (path,) if path else ()):
        where = dotted(loc) or "body"
        yield f"{where}: keys {problem}" if in_key else f"{where}: {problem}"


def _refuse_nul(values: dict[str, Any]) -> None:
    # Path parameters are named as such; a body or query schema's fields by their own names.
    errors = [
        error
        for name, value in values.items()
        for error in _nul_paths(value, "" if isinstance(value, BaseModel) else name)
    ]
    if errors:
        raise ValidationFailed(errors)


def _no_nul(view: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(view):

        @functools.wraps(view)
        async def checked_async(request: HttpRequest, **values: Any) -> Any:
            _refuse_nul(values)
            return await view(request, **values)

        return checked_async

    @functools.wraps(view)
    def checked(request: HttpRequest, **values: Any) -> Any:
        _refuse_nul(values)
        return view(request, **values)

    return checked


api.add_decorator(_no_nul, mode="operation")  # wraps each operation's validated call


@api.exception_handler(DependencyUnavailable)
def _dependency_unavailable(request: HttpRequest, exc: DependencyUnavailable) -> HttpResponse:
    """Redis or the journal did not answer (an idempotency record, a session): nothing was
    done, retry soon."""
    return _application_error(request, ServiceUnavailable(str(exc), type=exc.kind))


@api.exception_handler(ApplicationError)
def _application_error(request: HttpRequest, exc: ApplicationError) -> HttpResponse:
    # The lean execute door renders the same (agents.doors.rest.render).
    response = api.create_response(request, error_body(exc.type, exc.message), status=exc.status)
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthenticated):
        response["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(NinjaValidationError)
def _validation_error(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    return api.create_response(
        request, error_body("validation_error", validation_message(exc.errors)), status=422
    )


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _application_error(request, Unauthenticated())


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _application_error(request, BodyTooLarge())


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return api.create_response(
        request, error_body("invalid_request", str(exc)), status=exc.status_code
    )


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("unhandled error in %s %s", request.method, request.path)
    return api.create_response(
        request, error_body("internal_error", "internal error; it has been logged"), status=500
    )


def _mount() -> None:
    from agents.api import routers as agents_routers
    from budgets.api import router as budgets_router
    from budgets.slo_api import router as slos_router
    from console.audit_api import router as audit_router
    from console.drills.api import router as drills_router
    from incidents.api import router as incidents_router

    for agents_router in agents_routers:
        api.add_router("/", agents_router)
    api.add_router("/", budgets_router)
    api.add_router("/", incidents_router)
    api.add_router("/", audit_router)
    api.add_router("/", slos_router)
    api.add_router("/", drills_router)


_mount()
