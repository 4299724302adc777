"""One pure-ASGI middleware for what every request shares: request id, API key, body size, metrics, access log.

* ``X-Request-ID``: taken from the request when it is 1–128 characters of ``[A-Za-z0-9._:-]``,
  generated otherwise; echoed on the response, stored in ``request.state.request_id`` and in
  :data:`request_id_var` for log lines.
* API keys (when configured): 401 before the body is read, except on the open probe paths.
* Body size: ``Content-Length`` over the limit → 413 at once; a body streamed without one is
  counted and refused the same way. The body is read here and replayed to the app, so a later
  ``receive()`` (the disconnect watch of :mod:`.app`) reaches the server directly.
* Back-pressure: when the model queue is full (or draining), a model endpoint answers 503 with
  ``Retry-After`` before its body is even read — the cheapest possible refusal under overload.
* An exception escaping the app becomes an OpenAI-shaped 500 naming the request id.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from .auth import ApiKeys
from .batcher import QueueFull, ShuttingDown
from .config import ServeConfig
from .errors import error_body
from .metrics import ENDPOINTS, Metrics

logger = logging.getLogger("m3embed.serve")
access_logger = logging.getLogger("m3embed.serve.access")

#: The id of the request being handled (None outside a request).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("m3embed_request_id", default=None)

_RID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_MODEL_PATHS = frozenset({"/v1/embeddings", "/encode", "/score", "/search"})


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class ServeMiddleware:
    """See the module docstring; ``app`` is the FastAPI app it wraps."""

    def __init__(self, app: Any, *, config: ServeConfig, metrics: Metrics, keys: ApiKeys,
                 admit: Callable[[], None] | None = None) -> None:
        self.app = app
        self.config = config
        self.metrics = metrics
        self.keys = keys
        self.admit = admit  # raises QueueFull / ShuttingDown when the model takes no more work

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        if not _RID_OK.fullmatch(rid):
            rid = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["arrived"] = time.monotonic()
        token = request_id_var.set(rid)
        status: list[int] = []
        rid_header = (b"x-request-id", rid.encode("ascii"))

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                message = {**message, "headers": [*message.get("headers", []), rid_header]}
            await send(message)

        method, path = scope["method"], scope["path"]
        try:
            if not self.keys.is_open(path) and not self.keys.check(headers.get("authorization")):
                await _send_error(send_with_id, 401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                                  code="invalid_api_key", extra=[(b"www-authenticate", b"Bearer")])
                return
            if self.admit is not None and method == "POST" and path in _MODEL_PATHS:
                try:
                    self.admit()
                except (QueueFull, ShuttingDown) as e:
                    code = "queue_full" if isinstance(e, QueueFull) else "shutting_down"
                    await _send_error(send_with_id, 503, f"{e}; retry later", code=code,
                                      extra=[(b"retry-after", str(self.config.retry_after_s).encode())])
                    return
            if method in _BODY_METHODS:
                limit = self.config.max_request_bytes
                length = headers.get("content-length")
                if length is not None and (not length.isdigit() or int(length) > limit):
                    raise _BodyTooLarge
                body = await _read_body(receive, limit)
                receive = _replay(body, receive)
            await self.app(scope, receive, send_with_id)
        except _BodyTooLarge:
            await _send_error(send_with_id, 413, f"request body larger than {self.config.max_request_bytes} bytes",
                              code="request_too_large")
        except _ClientGone:
            status.append(499)
        except Exception:
            logger.exception("unhandled error in %s %s (request %s)", method, path, rid)
            if not status:
                await _send_error(send_with_id, 500, f"internal server error (request id {rid})",
                                  code="internal_error")
        finally:
            seconds = time.perf_counter() - t0
            code = status[0] if status else 499  # no response: the client went away first
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(code)).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            access_logger.info('%s %s %d %.1f ms rid=%s', method, path, code, seconds * 1000, rid)
            request_id_var.reset(token)


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Any, status: int, message: str, *, code: str | None = None,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
