"""API-key authentication: with keys configured, every call carries `authorization: Bearer <key>`.

Health checks are exempt: load balancers and orchestrator probes send no credentials, and health
reveals nothing. Reflection is not exempt (it describes the API).
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable, Sequence

import grpc
from grpc_interceptor import AsyncServerInterceptor

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class ApiKeyInterceptor(AsyncServerInterceptor):
    def __init__(self, keys: Sequence[str]):
        if not keys:
            raise ValueError("ApiKeyInterceptor needs at least one key")
        self._keys = [k.encode() for k in keys]

    async def intercept(self, method: Callable, request_or_iterator: Any, context: grpc.aio.ServicerContext,
                        method_name: str) -> Any:
        if not method_name.startswith(EXEMPT_PREFIXES):
            problem = self._problem(context.invocation_metadata() or ())
            if problem is not None:
                # Outermost interceptor: the ErrorInterceptor does not see this, so abort directly.
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
        return await super().intercept(method, request_or_iterator, context, method_name)

    def _problem(self, metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
        values = [v for k, v in metadata if k == "authorization"]
        if not values:
            return "missing API key: send metadata 'authorization: Bearer <api key>'"
        value = values[0] if isinstance(values[0], str) else values[0].decode("latin-1")
        scheme, _, key = value.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return "malformed authorization metadata: expected 'Bearer <api key>'"
        given = key.strip().encode("utf-8", "replace")
        # Compare against every key in constant time so timing reveals neither a key nor which one matched.
        matches = [hmac.compare_digest(given, k) for k in self._keys]
        return None if any(matches) else "invalid API key"


def api_key_of(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    """The bearer key a call carries ('' without one)."""
    for k, v in metadata:
        if k == "authorization":
            value = v if isinstance(v, str) else v.decode("latin-1")
            scheme, _, key = value.partition(" ")
            return key.strip() if scheme.lower() == "bearer" else ""
    return ""


def scoped_request_id(request_id: str, api_key: str) -> str:
    """A client's request id as the router knows it: prefixed with a digest of its API key, so two
    clients choosing the same id neither share nor see each other's generation."""
    if not api_key:
        return request_id
    return f"{hashlib.sha256(api_key.encode()).hexdigest()[:16]}/{request_id}"
