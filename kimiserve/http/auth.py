"""Who is calling, from a Bearer header (or Anthropic's `x-api-key`, for the protocol that takes
it) or a key the protocol found in the body."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from kimiserve.domain.principal import Principal
from kimiserve.http.context import Context


def bearer_key(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def api_key_header(conn: HTTPConnection) -> str | None:
    """Anthropic's `x-api-key` header (the Messages API's own way to send a key)."""
    value = conn.headers.get("x-api-key", "").strip()
    return value or None


async def authenticate(services: Context, key: str | None) -> Principal:
    """The key's principal; in open mode a missing key means the default account."""
    if key is None and services.settings.open_mode:
        return services.default_principal
    return await services.keys.authenticate(key)


# A principal this server already authenticated another way (the dashboard's signed-in session,
# after its CSRF check) and placed in the ASGI scope; a client cannot set scope keys.
PRINCIPAL_SCOPE_KEY = "kimiserve.principal"


async def caller(services: Context, conn: HTTPConnection, *, x_api_key: bool = False) -> Principal:
    """Who is calling: the principal already in the scope, else the Bearer key's (else, with
    `x_api_key`, the `x-api-key` header's)."""
    given = conn.scope.get(PRINCIPAL_SCOPE_KEY)
    if isinstance(given, Principal):
        return given
    key = bearer_key(conn)
    if key is None and x_api_key:
        key = api_key_header(conn)
    return await authenticate(services, key)


def services_of(conn: HTTPConnection) -> Context:
    services: Context = conn.app.state.services
    return services
