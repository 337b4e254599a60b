"""The dashboard's web app: pages, a JSON API and server-sent event streams, all over SDK
calls made with the visitor's own token (see auth.py for why and how it is kept).

Routes (every /api route answers 401 without a session cookie):

    GET  /  /jobs/{id}  /sweeps  /sweeps/{id}  /workers   the page shell (static/page.html);
                                                          the script draws the page
    POST /login  /logout                                  token in, session cookie out
    GET  /api/jobs[?state=S]     /api/jobs/stream         the jobs table (stream: on change)
    GET  /api/jobs/{id}          /api/jobs/{id}/events    a job; its events, live (SSE)
    POST /api/jobs/{id}/cancel                            the one action (CSRF-checked)
    GET  /api/sweeps  /api/sweeps/{id}  /api/sweeps/{id}/stream
    GET  /api/workers            /api/workers/stream

Live data never makes the browser poll: a job's events are the coordinator's own event
stream (`Client.events(job, after_seq, follow=True)`), resumed after the last seq the
browser saw (its Last-Event-ID on reconnect). Tables without such a stream (jobs, sweeps,
workers) are one server-side list call per open page every `refresh_s`, sent only when
something changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio.to_thread
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tunefleet.client.client import Client
from tunefleet.client.dashboard import views
from tunefleet.client.dashboard.auth import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SESSION_COOKIE,
    Gateway,
    Session,
    Sessions,
    csrf_ok,
)
from tunefleet.client.errors import (
    DeadlineExceeded,
    NotFound,
    PermissionDenied,
    TunefleetError,
    Unauthenticated,
    Unavailable,
    ValidationError,
)
from tunefleet.client.types import Job, JobState

STATIC = Path(__file__).parent / "static"
# URL segment -> the page the script draws (with an id: that one job or sweep).
PAGES = {"jobs", "sweeps", "workers"}
SINGULAR = {"jobs": "job", "sweeps": "sweep"}
# Worker threads for SDK calls (see lifespan in create_app).
THREADS = 256
# A job's event stream is one response for at most this long (see job_events).
STREAM_S = 120.0
# At most this many running jobs get a progress figure per jobs-table refresh.
PROGRESS_JOBS = 8
HEADERS = {
    "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a form POST carries `Origin: null`.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class Dashboard:
    """The app's state: sessions, the gateway to the coordinator, and its settings."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        secure_cookies: bool = False,
        refresh_s: float = 2.0,
        stream_s: float = STREAM_S,
    ):
        self.gateway = gateway
        self.stream_s = stream_s
        self.sessions = Sessions()
        self.secure = secure_cookies
        self.refresh_s = refresh_s
        self._progress: dict[tuple[str, int], float | None] = {}

    # --- sessions ---------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    def set_cookies(self, response: Response, sid: str, session: Session) -> None:
        common = {"samesite": "strict", "secure": self.secure, "path": "/"}
        response.set_cookie(SESSION_COOKIE, sid, httponly=True, **common)
        response.set_cookie(CSRF_COOKIE, session.csrf, httponly=False, **common)

    def client(self, session: Session) -> Client:
        return self.gateway.client(session.token)

    # --- pages ------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        page = request.path_params.get("page") or "jobs"
        item = request.path_params.get("item", "")
        if page not in PAGES or (item and page == "workers"):
            return Response("no such page", status_code=404, headers=HEADERS)
        session = self.session(request)
        fresh = None
        if session is None:
            try:
                required = await run_in_threadpool(self.gateway.auth_required)
            except Unavailable:
                return _shell("login", status=503, message="the coordinator is unreachable")
            if required:
                return _shell("login", status=401, next_path=request.url.path)
            fresh = self.sessions.create(None, "anonymous")
        missing = item and await self._missing(fresh[1] if fresh else session, page, item)
        if missing:
            response = _shell("missing", status=404, item=SINGULAR[page], message=missing)
        else:
            response = _shell(SINGULAR[page] if item else page, item=item)
        if fresh is not None:
            self.set_cookies(response, *fresh)
        return response

    async def _missing(self, session: Session, page: str, item: str) -> str:
        """Why the job or sweep a page names is not there for this user ("" when it is, or
        when the coordinator cannot say now: the page's script then shows that). A page for
        it answers 404, as its API route does, not a 200 shell that draws an empty page."""
        client = self.client(session)
        get = client.get if page == "jobs" else client.get_sweep
        try:
            await run_in_threadpool(get, item)
        except (NotFound, ValidationError) as e:
            return e.message
        except TunefleetError:
            return ""
        return ""

    async def login(self, request: Request) -> Response:
        if not same_origin(request):
            return Response("cross-site login refused", status_code=403, headers=HEADERS)
        form = await _form(request)
        token = form.get("token", "").strip()
        next_path = form.get("next", "/")
        if not next_path.startswith("/") or next_path.startswith("//"):
            next_path = "/"
        if not token or not await run_in_threadpool(self.gateway.check_token, token):
            return _shell("login", status=401, next_path=next_path, message="token refused")
        sid, session = self.sessions.create(token)
        response = RedirectResponse(next_path, status_code=303, headers=HEADERS)
        self.set_cookies(response, sid, session)
        return response

    async def logout(self, request: Request) -> Response:
        if not same_origin(request):
            return Response("cross-site logout refused", status_code=403, headers=HEADERS)
        self.sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/", status_code=303, headers=HEADERS)
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")
        return response

    # --- the API ----------------------------------------------------------------------

    def api(self, handler: Callable[[Request, Session], Any]) -> Callable:
        """A route that needs a session, runs `handler` and maps SDK errors to statuses."""

        async def endpoint(request: Request) -> Response:
            session = self.session(request)
            if session is None:
                return JSONResponse({"error": "log in first"}, status_code=401, headers=HEADERS)
            try:
                result = await handler(request, session)
            except Unauthenticated as e:
                # The token was revoked (or the coordinator's tokens changed): this session
                # is over, and the next page view asks for a token again.
                self.sessions.drop(request.cookies.get(SESSION_COOKIE))
                return _error(e)
            except TunefleetError as e:
                return _error(e)
            if isinstance(result, Response):
                return result
            return JSONResponse(result, headers=HEADERS)

        return endpoint

    async def jobs(self, request: Request, session: Session) -> dict:
        return await run_in_threadpool(self._jobs, session, request.query_params.get("state"))

    def _jobs(self, session: Session, state: str | None) -> dict:
        client = self.client(session)
        jobs = client.list(states=[state] if state else None, limit=200)
        running = [j for j in jobs if j.state is JobState.RUNNING][:PROGRESS_JOBS]
        progress = {j.id: self._job_progress(client, j) for j in running}
        return {"jobs": [views.job_row(j, progress.get(j.id)) for j in jobs]}

    def _job_progress(self, client: Client, job: Job) -> float | None:
        """Training steps done / total from the job's latest train event (remembered per
        last seq, so an idle job costs nothing on the next refresh)."""
        key = (job.id, job.last_seq)
        if key not in self._progress:
            value = None
            after = max(0, job.last_seq - 40)
            for event in client.events(job.id, after, follow=False):
                m = event.metrics
                if m is not None and m.phase == "train" and m.total_steps:
                    value = min(1.0, m.step / m.total_steps)
            if len(self._progress) > 1000:
                self._progress.clear()
            self._progress[key] = value
        return self._progress[key]

    async def job(self, request: Request, session: Session) -> dict:
        job = await run_in_threadpool(self.client(session).get, request.path_params["job_id"])
        return views.job_detail(job)

    async def cancel(self, request: Request, session: Session) -> Any:
        if not same_origin(request) or not csrf_ok(session, request.headers.get(CSRF_HEADER)):
            return JSONResponse({"error": "CSRF check failed"}, status_code=403, headers=HEADERS)
        job_id = request.path_params["job_id"]
        job = await run_in_threadpool(
            self.client(session).cancel, job_id, "cancelled from the dashboard"
        )
        return views.job_detail(job)

    async def job_events(self, request: Request, session: Session) -> Any:
        client = self.client(session)
        job = await run_in_threadpool(client.get, request.path_params["job_id"])  # 404 first
        after = _after_seq(request)

        async def stream() -> AsyncIterator[dict]:
            # Each response follows for at most stream_s, then ends without "end": the
            # browser reconnects with Last-Event-ID and carries on. This bounds how long a
            # thread stays blocked in the SDK's iterator after its browser went away.
            events = client.events(job.id, after, follow=True, timeout=self.stream_s)
            try:
                async for event in iterate_in_threadpool(events):
                    yield {
                        "event": "ev",
                        "id": str(event.seq),
                        "data": _json(views.event_dict(event)),
                    }
            except DeadlineExceeded:
                return
            except TunefleetError as e:
                yield {"event": "failure", "data": _json({"error": e.message})}
                return
            yield {"event": "end", "data": "{}"}

        return EventSourceResponse(stream(), ping=15, headers=HEADERS, send_timeout=30)

    async def sweeps(self, request: Request, session: Session) -> dict:
        sweeps = await run_in_threadpool(self.client(session).list_sweeps, 100)
        return {"sweeps": [{**views.sweep_dict(s), "trials": len(s.trials)} for s in sweeps]}

    async def sweep(self, request: Request, session: Session) -> dict:
        sweep = await run_in_threadpool(
            self.client(session).get_sweep, request.path_params["sweep_id"]
        )
        return views.sweep_dict(sweep)

    async def workers(self, request: Request, session: Session) -> dict:
        workers = await run_in_threadpool(self.client(session).workers)
        return {"workers": [views.worker_dict(w) for w in workers], "now": time.time()}

    def poll_stream(self, handler: Callable, done: Callable[[dict], bool] = lambda _: False):
        """An SSE route sending `handler`'s answer whenever it changes, checked every
        refresh_s on the server (one list call per open page), until `done` says so."""

        async def route(request: Request, session: Session) -> Any:
            first = await handler(request, session)  # errors answer as statuses, not streams

            async def stream() -> AsyncIterator[dict]:
                last, value = None, first
                while True:
                    text = _json(value)
                    if text != last:
                        last = text
                        yield {"event": "data", "data": text}
                    if done(value):  # said, so the browser does not reconnect
                        yield {"event": "end", "data": "{}"}
                        return
                    if await request.is_disconnected():
                        return
                    await asyncio.sleep(self.refresh_s)
                    try:
                        value = await handler(request, session)
                    except TunefleetError as e:
                        yield {"event": "failure", "data": _json({"error": e.message})}
                        return

            return EventSourceResponse(stream(), ping=15, headers=HEADERS, send_timeout=30)

        return route


def same_origin(request: Request) -> bool:
    """A POST's Origin (or, without one, its Referer) names this dashboard's host. Browsers
    send Origin on every cross-site POST, so a forged form from another site fails here
    even before SameSite=Strict keeps the cookie off it."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True  # not a browser (curl, tests): no ambient cookie to abuse
    if origin == "null":
        return False
    return urlsplit(origin).netloc == request.headers.get("host")


async def _form(request: Request) -> dict[str, str]:
    """The login form's fields (urlencoded; parsed here rather than pulling in a multipart
    parser for two fields). A body over 8 KiB is no login form."""
    body = await request.body()
    if len(body) > 8192:
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    return {k: v[0] for k, v in fields.items()}


def _after_seq(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        return 0


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _error(e: TunefleetError) -> JSONResponse:
    status = 502
    if isinstance(e, NotFound):
        status = 404
    elif isinstance(e, Unauthenticated):
        status = 401
    elif isinstance(e, PermissionDenied):
        status = 403
    elif isinstance(e, ValidationError):
        status = 400
    elif isinstance(e, Unavailable):
        status = 503
    return JSONResponse({"error": e.message}, status_code=status, headers=HEADERS)


_SHELL = (STATIC / "page.html").read_text()


def _shell(
    page: str, *, status: int = 200, item: str = "", next_path: str = "/", message: str = ""
) -> HTMLResponse:
    """The one HTML page; the script reads which page to draw from <body>'s data-*. Values
    are escaped as attribute text (item and next come from the URL)."""
    from html import escape

    html = (
        _SHELL.replace("{page}", escape(page))
        .replace("{item}", escape(item))
        .replace("{next}", escape(next_path))
        .replace("{message}", escape(message))
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def create_app(
    gateway: Gateway,
    *,
    secure_cookies: bool = False,
    refresh_s: float = 2.0,
    stream_s: float = STREAM_S,
) -> Starlette:
    """The Starlette app over `gateway` (see `tunefleet.client.dashboard.DashboardServer`)."""
    d = Dashboard(gateway, secure_cookies=secure_cookies, refresh_s=refresh_s, stream_s=stream_s)

    def sweep_done(value: dict) -> bool:
        return bool(value.get("terminal"))

    routes = [
        Route("/login", d.login, methods=["POST"]),
        Route("/logout", d.logout, methods=["POST"]),
        Route("/api/jobs", d.api(d.jobs)),
        Route("/api/jobs/stream", d.api(d.poll_stream(d.jobs))),
        Route("/api/jobs/{job_id}", d.api(d.job)),
        Route("/api/jobs/{job_id}/events", d.api(d.job_events)),
        Route("/api/jobs/{job_id}/cancel", d.api(d.cancel), methods=["POST"]),
        Route("/api/sweeps", d.api(d.sweeps)),
        Route("/api/sweeps/{sweep_id}", d.api(d.sweep)),
        Route("/api/sweeps/{sweep_id}/stream", d.api(d.poll_stream(d.sweep, sweep_done))),
        Route("/api/workers", d.api(d.workers)),
        Route("/api/workers/stream", d.api(d.poll_stream(d.workers))),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        # Last: these patterns would match every path above.
        Route("/", d.page),
        Route("/{page:str}", d.page),
        Route("/{page:str}/{item:str}", d.page),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # SDK calls are blocking and run on anyio's worker threads; each open job page
        # holds one for its event stream, so the default 40 would cap open pages at 40
        # and then stall every other request.
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        yield
        gateway.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.dashboard = d
    return app
