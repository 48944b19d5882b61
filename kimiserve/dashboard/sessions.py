"""Dashboard sessions: an API key exchanged for an opaque session id, kept server-side.

The cookie holds only a random id (HttpOnly, SameSite=Strict, Secure over HTTPS); the session
holds the key's id, never its text, and its synchronizer CSRF token. Every request looks the key
up again, so a key revoked elsewhere ends its sessions at once. Sessions live in this process's
memory (bounded, idle ones expire): a restart signs everyone out, and replicas do not share them.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

COOKIE = "kimiserve_session"
PRE_CSRF_COOKIE = "kimiserve_signin_csrf"  # double-submit token of the sign-in form (no session yet)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass
class Session:
    id: str
    key_id: str
    account_id: str
    csrf: str
    last_seen: float


class SessionStore:
    def __init__(self, idle_ttl_s: float = 8 * 3600, max_sessions: int = 10_000) -> None:
        self._idle_ttl_s = idle_ttl_s
        self._max = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, key_id: str, account_id: str) -> Session:
        token = secrets.token_urlsafe
        session = Session(token(32), key_id, account_id, token(32), time.time())
        self._sessions[session.id] = session
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)  # the least recently seen
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.time()
        if now - session.last_seen > self._idle_ttl_s:
            del self._sessions[session_id]
            return None
        session.last_seen = now
        self._sessions.move_to_end(session_id)
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)


def same_token(given: str | None, expected: str | None) -> bool:
    """A CSRF check in constant time; a missing token on either side never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
