"""The dashboard at `/dashboard`: server-rendered pages (Jinja2, autoescaped) over the admin
operations (`platform/admin.py`), the usage reports and the engines, plus the playground's
same-origin chat endpoint.

Who sees what: any valid key signs in; a key with the `admin` scope sees every page and every
account; any other key sees its own account's overview and tasks and the playground. Every
state-changing request carries the session's CSRF token (a form field, or the `X-CSRF-Token`
header for the playground's fetch); the sign-in form, before any session, a double-submit token.

The playground never holds a key: the browser posts to `/dashboard/api/chat` (OpenAI-compatible)
or `/dashboard/api/tasks` (Runware) with its session cookie (SameSite=Strict, HttpOnly) and CSRF
header, and the server runs that protocol's own handler as the session's key (looked up afresh,
so revocation applies at once).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from kimiserve.dashboard import charts
from kimiserve.dashboard.sessions import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    PRE_CSRF_COOKIE,
    Session,
    SessionStore,
    same_token,
)
from kimiserve.domain.ports import KeyRow, Limits
from kimiserve.errors import (
    AuthenticationFailed,
    Forbidden,
    InvalidRequest,
    KimiserveError,
    as_kimiserve_error,
)
from kimiserve.http.auth import PRINCIPAL_SCOPE_KEY
from kimiserve.http.request_id import request_id_of
from kimiserve.platform.admin import parse_usd
from kimiserve.platform.api_keys import SCOPES, principal_of
from kimiserve.protocols.openai.errors import error_response as openai_error_response
from kimiserve.protocols.openai.routes import chat_completions
from kimiserve.protocols.runware.errors import error_item
from kimiserve.protocols.runware.routes import post_tasks
from kimiserve.services import Services
from kimiserve.storage.sql.error_counts import SqlErrorCounts
from kimiserve.storage.sql.reports import SqlReports

PREFIX = "/dashboard"
STATIC = Path(__file__).parent / "static"
# Scripts and styles only from this server; no inline script runs; no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)

Handler = Callable[[Request, "Viewer"], Awaitable[Response]]


class Viewer:
    """The signed-in key behind a request."""

    def __init__(self, session: Session, key: KeyRow) -> None:
        self.session = session
        self.key = key

    @property
    def admin(self) -> bool:
        return "admin" in self.key.scopes

    @property
    def account_scope(self) -> str | None:
        """The account whose data this viewer may see; None: every account (admin)."""
        return None if self.admin else self.key.account_id


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


MAX_FORM_BYTES = 64 * 1024


async def _form(request: Request) -> FormData:
    """A URL-encoded form body (the only kind these pages send), read once per request."""
    cached = request.scope.get("kimiserve.dashboard.form")
    if isinstance(cached, FormData):
        return cached
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Refused(413, "The form is too large.")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        form = FormData()
    else:
        pairs: list[tuple[str, str | UploadFile]] = list(
            parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        )
        form = FormData(pairs)
    request.scope["kimiserve.dashboard.form"] = form
    return form


def _limits(form: FormData) -> Limits:
    def field(name: str) -> int | None:
        text = str(form.get(name) or "").strip()
        if not text:
            return None
        if not text.isdigit() or int(text) <= 0:
            raise InvalidRequest(f"{name} must be a whole number above 0, or empty.", parameter=name)
        return int(text)

    return Limits(rpm=field("rpm"), tpm=field("tpm"), concurrency=field("concurrency"))


class Dashboard:
    def __init__(self) -> None:
        self.sessions = SessionStore()
        self.env = Environment(
            loader=PackageLoader("kimiserve.dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.env.filters["usd"] = lambda micros: "—" if micros is None else f"${micros / 1_000_000:,.6f}"
        self.env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
        self.env.filters["pretty"] = lambda obj: json.dumps(obj, indent=2, ensure_ascii=False)

    # ---- rendering ----------------------------------------------------------------------

    def page(
        self, request: Request, template: str, viewer: Viewer | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        html = self.env.get_template(template).render(
            prefix=PREFIX,
            viewer=viewer,
            csrf=viewer.session.csrf if viewer else None,
            path=request.url.path,
            **context,
        )
        response = HTMLResponse(html, status_code=status)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    # ---- who is asking --------------------------------------------------------------------

    async def viewer(self, request: Request) -> Viewer | None:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return None
        key = await _services(request).platform.account_store.get_key(session.key_id)
        if key is None or key.revoked:
            self.sessions.end(session.id)
            return None
        return Viewer(session, key)

    def guarded(self, handler: Handler, *, admin: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """Signed in (else to the sign-in page), admin when asked, CSRF checked on POST."""

        async def endpoint(request: Request) -> Response:
            viewer = await self.viewer(request)
            if viewer is None:
                return RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
            try:
                if admin and not viewer.admin:
                    raise Refused(403, "This page needs a key with the admin scope.")
                if request.method == "POST":
                    form = await _form(request)
                    if not same_token(str(form.get(CSRF_FIELD) or ""), viewer.session.csrf):
                        raise Refused(403, "The form's CSRF token is missing or wrong; reload the page.")
                return await handler(request, viewer)
            except Refused as exc:
                return self.page(request, "refused.html", viewer, exc.status, message=exc.message)

        return endpoint

    # ---- sign-in ---------------------------------------------------------------------------

    async def sign_in_form(self, request: Request, error: str | None = None, status: int = 200) -> Response:
        token = secrets.token_urlsafe(32)
        response = self.page(request, "sign_in.html", None, status, pre_csrf=token, error=error)
        response.set_cookie(
            PRE_CSRF_COOKIE,
            token,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def sign_in_page(self, request: Request) -> Response:
        if await self.viewer(request) is not None:
            return RedirectResponse(f"{PREFIX}/overview", status_code=303)
        return await self.sign_in_form(request)

    async def sign_in(self, request: Request) -> Response:
        try:
            form = await _form(request)
        except Refused as exc:
            return await self.sign_in_form(request, exc.message, exc.status)
        if not same_token(str(form.get(CSRF_FIELD) or ""), request.cookies.get(PRE_CSRF_COOKIE)):
            return await self.sign_in_form(request, "The form's CSRF token is missing or wrong.", 403)
        try:
            principal = await _services(request).keys.authenticate(str(form.get("key") or "").strip())
        except KimiserveError:
            return await self.sign_in_form(request, "That key is not valid.", 401)
        session = self.sessions.create(principal.key_id, principal.account_id)
        response = RedirectResponse(f"{PREFIX}/overview", status_code=303)
        response.set_cookie(
            COOKIE,
            session.id,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(PRE_CSRF_COOKIE, path=PREFIX)
        return response

    async def sign_out(self, request: Request, viewer: Viewer) -> Response:
        self.sessions.end(viewer.session.id)
        response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    # ---- pages -----------------------------------------------------------------------------

    async def overview(self, request: Request, viewer: Viewer) -> Response:
        services = _services(request)
        window = charts.Window.of(request.query_params.get("range"), time.time())
        rows = await SqlReports(services.platform.db).usage(
            window.since, window.until, window.bucket_s, viewer.account_scope
        )
        keys = await services.platform.account_store.list_keys(viewer.account_scope)
        stored_errors = (
            await SqlErrorCounts(services.platform.db).buckets(window.since, window.until, window.bucket_s)
            if viewer.admin
            else None
        )
        data = charts.overview(window, rows, {k.id: k.name for k in keys}, stored_errors)
        errors = _errors_by_code(services) if viewer.admin else None
        return self.page(
            request,
            "overview.html",
            viewer,
            data=data,
            ranges=list(charts.RANGES),
            errors=errors,
            stand_ins=[m for m in services.registry.models() if m.served_by],
        )

    async def accounts(self, request: Request, viewer: Viewer, **context: Any) -> Response:
        status = context.pop("status", 200)
        admin = _services(request).admin
        return self.page(
            request, "accounts.html", viewer, status, accounts=await admin.list_accounts(), **context
        )

    async def accounts_post(self, request: Request, viewer: Viewer) -> Response:
        admin = _services(request).admin
        form = await _form(request)
        action = str(form.get("action") or "")
        account = str(form.get("account") or "")
        try:
            if action == "create":
                await admin.create_account(str(form.get("name") or "").strip())
                note = "Account created."
            elif action == "top-up":
                await admin.top_up(account, parse_usd(str(form.get("amount_usd") or "")), None)
                note = "Credit added."
            elif action == "limits":
                await admin.set_account_limits(account, _limits(form))
                note = "Limits saved."
            else:
                raise InvalidRequest(f"Unknown action {action!r}.", parameter="action")
        except KimiserveError as exc:
            return await self.accounts(request, viewer, error=exc.message, status=exc.status)
        return await self.accounts(request, viewer, notice=note)

    async def keys(self, request: Request, viewer: Viewer, **context: Any) -> Response:
        status = context.pop("status", 200)
        services = _services(request)
        return self.page(
            request,
            "keys.html",
            viewer,
            status,
            keys=await services.admin.list_keys(),
            accounts=await services.admin.list_accounts(),
            scopes=SCOPES,
            **context,
        )

    async def keys_post(self, request: Request, viewer: Viewer) -> Response:
        admin = _services(request).admin
        form = await _form(request)
        try:
            if form.get("action") == "revoke":
                key_id = str(form.get("key_id") or "")
                if not await admin.revoke_key(key_id):
                    raise InvalidRequest(f"No active key {key_id}.", parameter="key_id")
                return await self.keys(request, viewer, notice=f"Key {key_id} revoked.")
            scopes = frozenset(str(s) for s in form.getlist("scopes"))
            unknown = scopes - set(SCOPES)
            if not scopes or unknown:
                raise InvalidRequest("Pick at least one scope (of the ones listed).", parameter="scopes")
            models_text = str(form.get("models") or "").replace(",", " ").split()
            created = await admin.create_key(
                str(form.get("account") or ""),
                str(form.get("name") or "").strip() or "default",
                scopes=scopes,
                models=tuple(models_text) if models_text else None,
                limits=_limits(form),
            )
        except KimiserveError as exc:
            return await self.keys(request, viewer, error=exc.message, status=exc.status)
        return await self.keys(request, viewer, created=created)

    async def tasks(self, request: Request, viewer: Viewer) -> Response:
        reports = SqlReports(_services(request).platform.db)
        found = await reports.recent_tasks(viewer.account_scope)
        return self.page(request, "tasks.html", viewer, tasks=found)

    async def task(self, request: Request, viewer: Viewer) -> Response:
        reports = SqlReports(_services(request).platform.db)
        task_uuid = request.path_params["task_uuid"]
        # Another account's task reads exactly as a missing one.
        detail = await reports.task(task_uuid, viewer.account_scope)
        if detail is None:
            raise Refused(404, "No such task.")
        deliveries = await reports.deliveries(task_uuid)
        return self.page(request, "task.html", viewer, task=detail, deliveries=deliveries)

    async def engines(self, request: Request, viewer: Viewer) -> Response:
        return self.page(request, "engines.html", viewer, models=await _engine_rows(_services(request)))

    async def playground(self, request: Request, viewer: Viewer) -> Response:
        services = _services(request)
        allowed = viewer.key.models
        models = [
            {
                "name": m.id,
                "aliases": [a for a in m.names if a != m.id],
                "thinking": m.engine.capabilities.thinking,
                "served_by": m.served_by,
                "price": {
                    "input": m.price.input_micros_per_million,
                    "output": m.price.output_micros_per_million,
                    "cached": m.price.cached_micros_per_million,
                },
            }
            for m in services.registry.models()
            if allowed is None or any(n in allowed for n in m.names)
        ]
        base_url = str(request.base_url).rstrip("/")
        return self.page(
            request,
            "playground.html",
            viewer,
            config={"models": models, "base_url": base_url, "inference": "inference" in viewer.key.scopes},
        )

    # ---- the playground's chat ---------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        """POST /dashboard/api/chat: the OpenAI-compatible chat completion as the session's key."""
        return await self._as_viewer(request, chat_completions, openai=True)

    async def tasks_api(self, request: Request) -> Response:
        """POST /dashboard/api/tasks: Runware tasks (a streamed textInference) as the session's key."""
        return await self._as_viewer(request, post_tasks, openai=False)

    async def _as_viewer(
        self, request: Request, handler: Callable[[Request], Awaitable[Response]], *, openai: bool
    ) -> Response:
        def refuse(error: KimiserveError) -> Response:
            """In the proxied protocol's own format, by its one error mapping."""
            if openai:
                return openai_error_response(error, request_id_of(request))
            item = error_item(error, task_type=None, task_uuid=None)
            return JSONResponse({"errors": [item]}, status_code=error.status)

        viewer = await self.viewer(request)
        if viewer is None:
            return refuse(AuthenticationFailed("Sign in to the dashboard first.", code="notSignedIn"))
        if not same_token(request.headers.get(CSRF_HEADER), viewer.session.csrf):
            return refuse(Forbidden("The X-CSRF-Token header is missing or wrong.", code="csrfFailed"))
        scope = dict(request.scope)
        scope[PRINCIPAL_SCOPE_KEY] = principal_of(viewer.key)
        return await handler(Request(scope, request.receive))

    # ---- routes ----------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        async def root(request: Request) -> Response:
            return RedirectResponse(f"{PREFIX}/overview", status_code=303)

        g = self.guarded
        return [
            Route("/", root, methods=["GET"]),
            Route("/sign-in", self.sign_in_page, methods=["GET"]),
            Route("/sign-in", self.sign_in, methods=["POST"]),
            Route("/sign-out", g(self.sign_out), methods=["POST"]),
            Route("/overview", g(self.overview), methods=["GET"]),
            Route("/accounts", g(self.accounts, admin=True), methods=["GET"]),
            Route("/accounts", g(self.accounts_post, admin=True), methods=["POST"]),
            Route("/keys", g(self.keys, admin=True), methods=["GET"]),
            Route("/keys", g(self.keys_post, admin=True), methods=["POST"]),
            Route("/tasks", g(self.tasks), methods=["GET"]),
            Route("/tasks/{task_uuid}", g(self.task), methods=["GET"]),
            Route("/engines", g(self.engines, admin=True), methods=["GET"]),
            Route("/playground", g(self.playground), methods=["GET"]),
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/tasks", self.tasks_api, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="dashboard-static"),
        ]


def _errors_by_code(services: Services) -> list[tuple[str, str, str, int]]:
    """(protocol, task type, code, count) of refused or failed requests since this process started."""
    out = []
    for metric in services.metrics.registry.collect():
        if metric.name != "kimiserve_requests":
            continue
        for sample in metric.samples:
            status = sample.labels.get("status", "")
            if sample.name.endswith("_total") and status != "success" and sample.value:
                labels = sample.labels
                out.append((labels["protocol"], labels["task_type"], status, int(sample.value)))
    return sorted(out, key=lambda e: -e[3])


async def _engine_rows(services: Services) -> list[dict[str, Any]]:
    rows = []
    for model in services.registry.models():
        engine = model.engine
        try:
            health = await engine.health()
            ok, detail = health.ok, health.detail
        except Exception as exc:  # a broken health check is itself the news
            ok, detail = False, as_kimiserve_error(exc).message
        replicas = [
            {
                "label": r.label,
                "weight": r.weight,
                "cap": r.cap,
                "outstanding": r.outstanding,
                "served": r.served,
                "ejected": r.ejected_until > time.monotonic(),
            }
            for r in getattr(engine, "replicas", [])
            if hasattr(r, "outstanding")
        ]
        active = getattr(engine, "active_sequences", None)
        waiting = getattr(engine, "waiting", None)
        rows.append(
            {
                "id": model.id,
                "aliases": [a for a in model.names if a != model.id],
                "served_by": model.served_by,
                "engine": engine.name,
                "ok": ok,
                "detail": detail,
                "in_flight": active if isinstance(active, int) else None,
                "waiting": waiting if isinstance(waiting, int) else None,
                "capabilities": engine.capabilities,
                "replicas": replicas,
            }
        )
    return rows


def routes() -> list[BaseRoute]:
    return [Mount(PREFIX, routes=Dashboard().routes())]
