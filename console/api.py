"""The one NinjaAPI, mounted at /api/v1/. Each app contributes a Router from <app>/api.py."""

from __future__ import annotations

import logging

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError

from console.errors import ApplicationError

logger = logging.getLogger("breakwater.api")

api = NinjaAPI(
    title="Breakwater API",
    version="1",
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)


def error_body(type_: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"type": type_, "message": message}}


@api.exception_handler(ApplicationError)
def _application_error(request: HttpRequest, exc: ApplicationError) -> HttpResponse:
    return api.create_response(request, error_body(exc.type, exc.message), status=exc.status)


@api.exception_handler(NinjaValidationError)
def _validation_error(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    lines = []
    for err in exc.errors:
        loc = ".".join(str(part) for part in err.get("loc", ()) if part not in {"body", "payload"})
        lines.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return api.create_response(
        request, error_body("validation_error", "; ".join(lines)), status=422
    )


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = api.create_response(
        request,
        error_body("authentication_error", "missing, invalid, expired or revoked API key"),
        status=401,
    )
    response["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return api.create_response(
        request, error_body("request_too_large", "request body exceeds the size limit"), status=413
    )


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
    from agents.api import router as agents_router
    from agents.api_async import router as agents_async_router
    from budgets.api import router as budgets_router
    from incidents.api import router as incidents_router

    api.add_router("/", agents_router)
    api.add_router("/", agents_async_router)
    api.add_router("/", budgets_router)
    api.add_router("/", incidents_router)


_mount()
