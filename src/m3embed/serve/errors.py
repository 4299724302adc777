"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` for every failure.

Validation errors (FastAPI's ``RequestValidationError``) become 400s whose ``param`` names the
field and index (``input[3]``); HTTP errors keep their status; anything unexpected is a 500 that
names the request id (details go to the log, not to the client).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import type_name

logger = logging.getLogger("m3embed.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          415: "invalid_request_error", 422: "invalid_request_error", 499: "client_closed_request",
          500: "server_error", 503: "service_unavailable", 504: "timeout_error"}


class ApiError(Exception):
    """An error answered as ``status`` with an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status,
                        headers=dict(headers or {}))


def loc_to_param(loc: Sequence[Any]) -> str | None:
    """``("body", "pairs", 0, 1)`` → ``"pairs[0][1]"``; None for the body itself."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def describe_validation_error(err: Mapping[str, Any]) -> tuple[str, str | None]:
    """(message, param) of one pydantic / FastAPI error dict."""
    ctx = err.get("ctx") or {}
    if "param" in ctx and "message" in ctx:  # our own checks (schemas.invalid)
        return str(ctx["message"]), str(ctx["param"])
    kind = err.get("type", "")
    loc = tuple(err.get("loc", ()))
    if kind == "json_invalid":
        detail = ctx.get("error", "JSON decode error")
        pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
        where = f" at character {pos}" if pos is not None else ""
        return f"body: invalid JSON{where} ({detail})", None
    param = loc_to_param(loc)
    if param is None:  # the body itself
        if kind == "missing":
            return "body: a JSON object is required", None
        return f"body: expected a JSON object, got {type_name(err.get('input'))}", None
    if kind == "missing":
        return f"{param}: this field is required", param
    if kind == "extra_forbidden":
        return f"{param}: unknown field", param
    msg = str(err.get("msg", "invalid value"))
    msg = msg[:1].lower() + msg[1:]
    if "input" in err and kind.endswith("_type"):
        msg += f", got {type_name(err['input'])}"
    return f"{param}: {msg}", param


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if not errors:
        return error_response(400, "invalid request")
    message, param = describe_validation_error(errors[0])
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return error_response(400, message, param=param)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        detail = f"no endpoint {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    elif exc.status_code == 400 and "parsing the body" in detail:
        detail = "body: cannot parse the request body as JSON"
    return error_response(exc.status_code, detail, headers=getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    rid = getattr(request.state, "request_id", None)
    logger.error("internal error in %s %s (request %s)", request.method, request.url.path, rid, exc_info=exc)
    return error_response(500, f"internal server error (request id {rid})", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
