"""Who a browser is, for the dashboard: sessions holding the user's own coordinator token,
and one SDK client per token.

The dashboard enforces nothing about jobs itself: every page's data comes from an SDK call
made with the visitor's token, so the coordinator decides what a `user` may see exactly as
it does for `ftctl` (another user's job is NotFound). The dashboard only has to keep the
token safe:

- The browser gets a random session id in an HttpOnly, SameSite=Strict cookie (Secure over
  HTTPS); the token stays in this process's memory, so the cookie alone cannot be replayed
  against the coordinator, and the token is never in a URL, a page or a log line.
- The one state-changing action (cancel) and login/logout are POSTs that must carry the
  session's CSRF token in a header (double submit: a second, script-readable cookie) and,
  when the browser sends one, an Origin naming this dashboard.
- A coordinator without tokens needs no login: the probe below finds out which it is.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from tunefleet.client.client import Client, RetryPolicy
from tunefleet.client.errors import PermissionDenied, Unauthenticated
from tunefleet.transport import ChannelSecurity

SESSION_COOKIE = "tf_session"
CSRF_COOKIE = "tf_csrf"
CSRF_HEADER = "x-csrf-token"
# A session unused this long is forgotten (the user types the token again).
SESSION_IDLE_S = 12 * 3600.0
MAX_SESSIONS = 1000
MAX_CLIENTS = 32


@dataclass
class Session:
    token: str | None
    csrf: str
    principal_hint: str
    used: float


class Sessions:
    """Session id -> the user's token, in memory only (a restart logs everyone out)."""

    def __init__(self, idle_s: float = SESSION_IDLE_S):
        self.idle_s = idle_s
        self._by_id: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, token: str | None, hint: str = "") -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(token, secrets.token_urlsafe(24), hint, time.monotonic())
        with self._lock:
            self._by_id[sid] = session
            while len(self._by_id) > MAX_SESSIONS:
                self._by_id.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._by_id.get(sid)
            if session is None:
                return None
            if time.monotonic() - session.used > self.idle_s:
                del self._by_id[sid]
                return None
            session.used = time.monotonic()
            self._by_id.move_to_end(sid)
            return session

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


def csrf_ok(session: Session, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(session.csrf, header or "")


class Gateway:
    """SDK clients for the coordinator, one per token (channels are reused, not opened per
    request), and whether the coordinator wants tokens at all."""

    def __init__(self, target: str | None, security: ChannelSecurity, *, timeout_s: float = 10.0):
        # The dashboard's own token (if any) is never lent to a browser.
        self.security = dataclasses.replace(security, token=None)
        self.target = target
        self.timeout_s = timeout_s
        self._clients: OrderedDict[str | None, Client] = OrderedDict()
        self._lock = threading.Lock()
        self._auth_required: bool | None = None

    def client(self, token: str | None) -> Client:
        with self._lock:
            client = self._clients.get(token)
            if client is None:
                client = Client(
                    self.target,
                    timeout=self.timeout_s,
                    retry=RetryPolicy(max_elapsed_s=self.timeout_s, stream_max_elapsed_s=60.0),
                    security=dataclasses.replace(self.security, token=token),
                )
                self._clients[token] = client
                while len(self._clients) > MAX_CLIENTS:
                    self._clients.popitem(last=False)[1].close()
            self._clients.move_to_end(token)
            return client

    def forget(self, token: str | None) -> None:
        with self._lock:
            client = self._clients.pop(token, None)
        if client is not None:
            client.close()

    def auth_required(self) -> bool:
        """Whether the coordinator refuses a call without a token (asked once; an
        unreachable coordinator raises Unavailable and is asked again next time)."""
        if self._auth_required is None:
            try:
                self.client(None).list(limit=1)
                self._auth_required = False
            except (Unauthenticated, PermissionDenied):
                self._auth_required = True
        return self._auth_required

    def check_token(self, token: str) -> bool:
        """True if the coordinator accepts `token` for listing jobs (user or admin)."""
        try:
            self.client(token).list(limit=1)
            return True
        except (Unauthenticated, PermissionDenied):
            self.forget(token)
            return False

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), OrderedDict()
        for c in clients:
            c.close()
