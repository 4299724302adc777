"""Optional API keys: ``Authorization: Bearer <key>``, compared in constant time.

With keys configured every endpoint needs one except the probes ``/health`` and ``/ready``
(orchestrators call them without credentials; they reveal nothing but up / ready).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

OPEN_PATHS = frozenset({"/health", "/ready"})


class ApiKeys:
    """The accepted keys; ``check(authorization_header)`` → True when one matches."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.encode("utf-8") for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> bool:
        if not self._keys:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        given = token.strip().encode("utf-8", "surrogateescape")
        ok = False
        for key in self._keys:  # no early exit: the time does not depend on which key matched
            ok |= hmac.compare_digest(given, key)
        return ok

    @staticmethod
    def is_open(path: str) -> bool:
        return path in OPEN_PATHS
