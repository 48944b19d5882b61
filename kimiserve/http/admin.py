"""The admin HTTP API under `/admin/`, for keys with the `admin` scope: the same operations as
the `kimiserve accounts|keys` commands (one implementation: `platform/admin.py`).

Errors are `{"error": {"code", "message", "parameter", "request_id"}}` with the error's status.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kimiserve.domain.ports import Limits
from kimiserve.domain.principal import authorize
from kimiserve.errors import InvalidRequest, NotFound, as_kimiserve_error
from kimiserve.http.auth import authenticate, bearer_key, services_of
from kimiserve.http.body import read_json
from kimiserve.http.request_id import request_id_of
from kimiserve.platform.admin import Admin, parse_usd
from kimiserve.platform.api_keys import DEFAULT_SCOPES, SCOPES, parse_scopes

PositiveInt = Annotated[int, Field(gt=0)]
M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LimitsBody(Body):
    """Rate limits; null or absent: no limit of that kind."""

    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    concurrency: PositiveInt | None = None

    def limits(self) -> Limits:
        return Limits(rpm=self.rpm, tpm=self.tpm, concurrency=self.concurrency)


class CreateAccount(Body):
    name: Annotated[str, Field(min_length=1, max_length=200)]


class TopUp(Body):
    amount_usd: Annotated[str, Field(pattern=r"^\d+(\.\d{1,6})?$")] = Field(
        description='Dollars to add, as a decimal string (exact), e.g. "10" or "0.25".'
    )
    note: str | None = None


class CreateKey(Body):
    account: str = Field(description="Account id or name.")
    name: Annotated[str, Field(min_length=1, max_length=200)] = "default"
    scopes: list[str] = Field(default_factory=lambda: sorted(DEFAULT_SCOPES), description=f"Of {SCOPES}.")
    models: list[str] | None = Field(None, description="Model names the key may use; null: every model.")
    limits: LimitsBody = Field(default_factory=LimitsBody)


BODIES: dict[str, type[BaseModel]] = {
    "CreateAccount": CreateAccount,
    "TopUp": TopUp,
    "Limits": LimitsBody,
    "CreateKey": CreateKey,
}


async def _parse(request: Request, model: type[M]) -> M:
    body = await read_json(request, services_of(request).settings.max_body_bytes)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in error["loc"]) or "body"
        raise InvalidRequest(f"{param}: {error['msg']}", parameter=param) from None


def _error(exc: BaseException, request: Request) -> JSONResponse:
    err = as_kimiserve_error(exc)
    body = {
        "code": err.code,
        "message": err.message,
        "parameter": err.parameter,
        "request_id": request_id_of(request),
    }
    return JSONResponse({"error": body}, status_code=err.status)


async def _admin(request: Request) -> Admin:
    services = services_of(request)
    principal = await authenticate(services, bearer_key(request))
    authorize(principal, "admin")
    return services.admin


def _endpoint(handler: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            admin = await _admin(request)
            result = await handler(request, admin)
        except Exception as exc:
            return _error(exc, request)
        return JSONResponse(result)

    endpoint.__doc__ = handler.__doc__
    endpoint.__name__ = handler.__name__
    return endpoint


async def list_accounts(request: Request, admin: Admin) -> Any:
    """List accounts with balances and limits."""
    return {"data": await admin.list_accounts()}


async def create_account(request: Request, admin: Admin) -> Any:
    """Create an account (unmetered until its first top-up)."""
    body = await _parse(request, CreateAccount)
    return await admin.create_account(body.name)


async def show_account(request: Request, admin: Admin) -> Any:
    """One account: balance, holds, limits, keys, usage totals and ledger entries."""
    return await admin.show_account(request.path_params["account"])


async def top_up(request: Request, admin: Admin) -> Any:
    """Add credit to an account (a ledger `topup` entry)."""
    body = await _parse(request, TopUp)
    return await admin.top_up(request.path_params["account"], parse_usd(body.amount_usd), body.note)


async def set_account_limits(request: Request, admin: Admin) -> Any:
    """Replace an account's rate limits."""
    body = await _parse(request, LimitsBody)
    return await admin.set_account_limits(request.path_params["account"], body.limits())


async def list_keys(request: Request, admin: Admin) -> Any:
    """List keys (never their secrets), optionally of one account (`?account=`)."""
    return {"data": await admin.list_keys(request.query_params.get("account"))}


async def create_key(request: Request, admin: Admin) -> Any:
    """Create a key; the reply's `key` is the only time its text is shown."""
    body = await _parse(request, CreateKey)
    return await admin.create_key(
        body.account,
        body.name,
        scopes=parse_scopes(",".join(body.scopes)),
        models=tuple(body.models) if body.models is not None else None,
        limits=body.limits.limits(),
    )


async def revoke_key(request: Request, admin: Admin) -> Any:
    """Revoke a key."""
    key_id = request.path_params["key_id"]
    if not await admin.revoke_key(key_id):
        raise NotFound(f"No active key {key_id}.", code="keyNotFound", parameter="key_id")
    return {"id": key_id, "state": "revoked"}


async def set_key_limits(request: Request, admin: Admin) -> Any:
    """Replace a key's rate limits."""
    body = await _parse(request, LimitsBody)
    key_id = request.path_params["key_id"]
    if not await admin.set_key_limits(key_id, body.limits()):
        raise NotFound(f"No key {key_id}.", code="keyNotFound", parameter="key_id")
    return {"id": key_id, "limits": body.model_dump()}


# (path, method, handler, request body model name or None) — also read by the OpenAPI document.
ENDPOINTS: list[tuple[str, str, Any, str | None]] = [
    ("/admin/accounts", "GET", list_accounts, None),
    ("/admin/accounts", "POST", create_account, "CreateAccount"),
    ("/admin/accounts/{account}", "GET", show_account, None),
    ("/admin/accounts/{account}/top-up", "POST", top_up, "TopUp"),
    ("/admin/accounts/{account}/limits", "PUT", set_account_limits, "Limits"),
    ("/admin/keys", "GET", list_keys, None),
    ("/admin/keys", "POST", create_key, "CreateKey"),
    ("/admin/keys/{key_id}/revoke", "POST", revoke_key, None),
    ("/admin/keys/{key_id}/limits", "PUT", set_key_limits, "Limits"),
]


def routes() -> list[BaseRoute]:
    return [Route(path, _endpoint(handler), methods=[method]) for path, method, handler, _ in ENDPOINTS]
