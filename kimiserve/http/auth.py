"""Who is calling, from a Bearer header or a key the protocol found in the body."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from kimiserve.http.context import Context
from kimiserve.platform.api_keys import Principal


def bearer_key(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def authenticate(services: Context, key: str | None) -> Principal:
    """The key's principal; in open mode a missing key means the default account."""
    if key is None and services.settings.open_mode:
        return services.default_principal
    return await services.keys.authenticate(key)


def services_of(conn: HTTPConnection) -> Context:
    services: Context = conn.app.state.services
    return services
